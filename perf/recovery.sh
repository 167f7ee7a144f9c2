#!/usr/bin/env bash
# Restart with a backlog: one million queued messages (benches/recovery.rs writes them, 1 KiB
# each, two recipients, in 64 MiB segments) and the time `sluice run` takes from exec until
# its management API answers with them all recovered and queued, plus the daemon's memory
# then. `startup-delivery-delay 1h` keeps it from delivering anything. Figures go to
# perf/out/recovery.txt; copy them into perf/RESULTS.md.
#
#   perf/recovery.sh                              # 1M messages
#   SLUICE_RECOVERY_MESSAGES=200000 perf/recovery.sh
#   SLUICE_RECOVERY_DOMAINS=1 perf/recovery.sh    # every recipient to two domains: the window
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SLUICE_RECOVERY_MESSAGES:-1000000}
DOMAINS=${SLUICE_RECOVERY_DOMAINS:-1000}
OUT=perf/out
mkdir -p "$OUT"
# The bench builds the spool once (and times `recover` alone, in process).
SLUICE_RECOVERY_MESSAGES=$N SLUICE_RECOVERY_DOMAINS=$DOMAINS cargo bench --bench recovery -q -- --quick >/dev/null 2>&1 || cargo bench --bench recovery
cargo build --release --locked -q
SPOOL=/tmp/sluice-bench-recovery-$N-$DOMAINS
WORK=$(mktemp -d)
PORT=${PORT:-2725}
API=${API:-2726}
cat > "$WORK/sluice.conf" <<CONF
host-name recovery.test
smtp-listener 127.0.0.1:$PORT
spool $SPOOL
http-mgmt-port 127.0.0.1:$API
startup-delivery-delay 1h
<source 127.0.0.1>
    always-allow-relaying yes
</source>
CONF
# Drop the page cache if we may (a cold start reads every segment from disk).
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && cold=cold || cold="warm (page cache not dropped)"
start=$(date +%s.%N)
target/release/sluice run -c "$WORK/sluice.conf" 2>"$WORK/log" &
pid=$!
# While the spool is recovered, /status says "recovering" with the files done so far.
seen_recovering=no
while :; do
    if curl -sf "127.0.0.1:$API/status" -o "$WORK/status.json" 2>/dev/null; then
        grep -q '"recovering"' "$WORK/status.json" || break
        seen_recovering="yes ($(grep -o '"filesDone": *[0-9]*' "$WORK/status.json" | grep -o '[0-9]*$') files done at the last look)"
    fi
    sleep 0.05
done
ready=$(date +%s.%N)
read -r recovered queued < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["startup"]["recoveredMessages"], d["queue"]["rcpt"])' "$WORK/status.json")
rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
anon=$(awk '/RssAnon/{print $2}' /proc/$pid/status)
file=$(awk '/RssFile/{print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
{
    echo "date $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) cpus $(nproc)"
    echo "messages $N (first recipients over $DOMAINS domains, second all to example.org) cache $cold"
    echo "start_to_api_seconds $(python3 -c "print(round($ready - $start, 2))")"
    echo "recovered_messages $recovered queued_recipients $queued"
    echo "status_during_recovery $seen_recovering"
    echo "daemon_rss_mib $((rss / 1024)) (heap and stacks $((anon / 1024)), mapped spool $((file / 1024)))"
    cat target/criterion/recovery.txt
} | tee "$OUT/recovery.txt"
rm -rf "$WORK"
