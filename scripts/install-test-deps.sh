#!/usr/bin/env bash
# Installs the real peers the integration tests talk to: Postfix (smtpd, smtp-source,
# smtp-sink), swaks (with TLS), dnsmasq, Redis (the fleet's, `<cluster>`), and a headless
# Chromium for the web monitor. Idempotent; each machine is fresh, so CI runs this every time.
set -euo pipefail
need=()
command -v smtp-source >/dev/null 2>&1 || need+=(postfix)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The fleet tests run their own redis-server (the system's is never started).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The PROXY protocol (v1 and v2) in front of a receiver: outbound mail through a proxy host.
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
# The web monitor's browser test (Debian's headless Chromium).
command -v chromium-headless-shell >/dev/null 2>&1 || need+=(chromium-headless-shell)
# swaks's --tls and --tlsc.
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
# A second, independent DKIM verifier beside dkimpy (tests/dkim_corpus.rs).
perl -MMail::DKIM::Verifier -e1 >/dev/null 2>&1 || need+=(libmail-dkim-perl)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string sluice.test" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Postfix's own daemon is never started; tests start a private instance whose configuration
# lives in $POSTFIX_TEST_DIR/etc, which Postfix only accepts when the default main.cf lists it.
POSTFIX_TEST_DIR=/tmp/sluice-postfix
if ! grep -qs "$POSTFIX_TEST_DIR/etc" /etc/postfix/main.cf; then
    grep -qs '^compatibility_level' /etc/postfix/main.cf || echo "compatibility_level = 3.6" >> /etc/postfix/main.cf
    echo "alternate_config_directories = $POSTFIX_TEST_DIR/etc" >> /etc/postfix/main.cf
fi
# Independent DKIM/ARC verification (dkimpy, with PyNaCl for ed25519 and authres for ARC) and a byte-exact
# SMTP receiver (aiosmtpd), in a venv of their own.
VENV=/opt/sluice-test-venv
if ! "$VENV/bin/python" -c "import dkim, nacl, aiosmtpd, authres" >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "dkimpy==1.1.8" "PyNaCl==1.6.2" "aiosmtpd==1.4.6" "authres==1.2.0"
fi
for t in smtp-source smtp-sink swaks dnsmasq redis-server haproxy chromium-headless-shell; do
    command -v "$t" >/dev/null || { echo "missing $t after install" >&2; exit 1; }
done
echo "test peers ready: $(command -v smtp-source smtp-sink swaks dnsmasq | tr '\n' ' ')$VENV"
