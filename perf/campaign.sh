#!/usr/bin/env bash
# A bulk campaign's shape, sluice against Postfix on this machine: DOMAINS destination domains
# with a Zipf mix (a few big providers, a long tail), each its own next hop (127.0.x.y, one
# sink listening on them all) with the same per-destination connection limit for both; a
# size mix; receivers that take LATENCY (+ JITTER) to answer the end of data and REPLY_LATENCY
# before other replies; unsigned, then every message signed with RSA-2048 (sluice itself,
# Postfix through OpenDKIM as a milter, the same key). Both relays fsync their queues; runs
# alternate. Written to perf/RESULTS.md: msg/s, CPU per message, peak memory, peak
# outbound connections, delivery latency (loadgen's send to the sink's 250).
#
#   perf/campaign.sh
#   RUNS=3 MESSAGES=30000 DOMAINS=1000 LATENCY=50ms perf/campaign.sh
#   SIGN=rsa perf/campaign.sh      # only the signed comparison (SIGN=off: only unsigned)
#   ONLY=sluice perf/campaign.sh   # sluice alone (quick before/after measurements)
#   PROFILE=/tmp/sluice.perf ONLY=sluice perf/campaign.sh
#                                  # records where sluice's CPU goes (perf record, cpu-clock)
#   BASELINE=8f34c26b perf/campaign.sh
#                                  # also an older sluice (built from that commit, with this
#                                  # commit's loadgen and sink), in the same runs: before/after
#   SINK_ARGS=--chunking perf/campaign.sh
#                                  # the receivers offer CHUNKING (as Gmail, Outlook, Postfix):
#                                  # sluice sends BDAT, Postfix's client DATA
#   FAILURES='*:451 4.7.1 try later:3%;*:550 5.1.1 no such user:2%' perf/campaign.sh
#                                  # scripted refusals at RCPT (`sluice sink --reply` rules, `;`
#                                  # between them); both relays retry after 5 s, and a run
#                                  # lasts until the last retry: msg/s then shows the wait
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/lib.sh
RUNS=${RUNS:-2}
MESSAGES=${MESSAGES:-20000}
DOMAINS=${DOMAINS:-200}
ZIPF=${ZIPF:-1}
SIZES=${SIZES:-2K:50,20K:40,100K:10}
LATENCY=${LATENCY:-20ms}
JITTER=${JITTER:-10ms}
REPLY_LATENCY=${REPLY_LATENCY:-1ms}
PER_DEST=${PER_DEST:-20}
INJECT=${INJECT:-50}
SIGN=${SIGN:-both}
ONLY=${ONLY:-}
FAILURES=${FAILURES:-}
SINK_RULES=()
IFS=';' read -r -a rules <<<"$FAILURES"
for r in "${rules[@]}"; do [ -n "$r" ] && SINK_RULES+=(--reply "$r"); done
OUT=perf/out
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

bash scripts/install-test-deps.sh >/dev/null
command -v opendkim >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends opendkim >/dev/null
}
cargo build --release --locked -q
BIN=$PWD/target/release/sluice
RELAY_BIN=${RELAY_BIN:-$BIN} # RELAY_BIN=path: another sluice build as the relay
RELAYS="sluice postfix"
if [ -n "${BASELINE:-}" ]; then
    BEFORE_BIN=$(build_at "$BASELINE")
    RELAYS="before sluice postfix"
fi
RELAY_PORT=${RELAY_PORT:-2625}
SINK_PORT=${SINK_PORT:-2626}
PF_DIR=/tmp/sluice-postfix # must match scripts/install-test-deps.sh
WORK=/tmp/sluice-campaign
rm -rf "$WORK" && mkdir -p "$WORK"
KEY=$WORK/dkim.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY" 2>/dev/null
chmod 644 "$KEY"

hz=$(getconf CLK_TCK)
# Destination k's next hop: 127.0.(1 + k/250).(1 + k%250).
hop() { echo "127.0.$((1 + $1 / 250)).$((1 + $1 % 250))"; }

SIGNED=0
start_sluice() {
    local conf=$WORK/sluice.conf key="" sign=""
    rm -rf "$WORK/spool"
    if [ "$SIGNED" = 1 ]; then key="domain-key perf,src.test,$KEY"; sign="dkim-sign yes"; fi
    {
        echo "host-name perf.sluice"
        echo "$key"
        echo "smtp-listener 127.0.0.1:$RELAY_PORT"
        echo "spool $WORK/spool"
        echo "<source 127.0.0.1>"
        echo "    always-allow-relaying yes"
        echo "    max-message-size 200M"
        echo "</source>"
        echo "<domain *>"
        echo "    max-smtp-out $PER_DEST"
        [ -n "$FAILURES" ] && echo "    retry-after 5s"
        echo "    $sign"
        echo "</domain>"
        for k in $(seq 0 $((DOMAINS - 1))); do
            echo "<domain d$k.campaign.test>"
            echo "    smtp-hosts [$(hop "$k")]:$SINK_PORT"
            echo "</domain>"
        done
        echo "<acct-file $WORK/acct.csv>"
        echo "    records d,b,t"
        echo "</acct-file>"
    } >"$conf"
    "$RELAY_BIN" run -c "$conf" 2>"$WORK/sluice.log" &
    RELAY_PID=$!
    wait_port "$RELAY_PORT"
}
stop_sluice() {
    # The relay's own CPU time (user + system), for the log.
    awk -v hz="$(getconf CLK_TCK)" '{printf "sluice CPU %.2f s\n", ($14 + $15) / hz}' "/proc/$RELAY_PID/stat" >&2 || true
    kill "$RELAY_PID"; wait "$RELAY_PID" || true
}
start_before() { RELAY_BIN=$BEFORE_BIN start_sluice; }
stop_before() { stop_sluice; }
before_rss_kib() { sluice_rss_kib; }
sluice_rss_kib() { awk '/VmHWM/{print $2}' "/proc/$RELAY_PID/status" 2>/dev/null || echo 0; }

start_opendkim() {
    cat >"$WORK/opendkim.conf" <<EOF
Syslog no
Domain src.test
Selector perf
KeyFile $KEY
Socket inet:8891@127.0.0.1
Canonicalization relaxed/relaxed
Mode s
UserID opendkim
# The key lies under /tmp (writable by all): allowed here, for the benchmark only.
RequireSafeKeys false
PidFile $WORK/opendkim.pid
EOF
    opendkim -x "$WORK/opendkim.conf"
    wait_port 8891
}
stop_opendkim() { [ -f "$WORK/opendkim.pid" ] && kill "$(cat "$WORK/opendkim.pid")" 2>/dev/null || true; sleep 0.5; }

start_postfix() {
    local extra="relay_domains = campaign.test
transport_maps = hash:$PF_DIR/etc/transport
default_destination_concurrency_limit = $PER_DEST
smtp_destination_concurrency_limit = $PER_DEST
default_process_limit = 400"
    [ -n "$FAILURES" ] && extra+=$'\nminimal_backoff_time = 5s\nmaximal_backoff_time = 10s\nqueue_run_delay = 5s'
    if [ "$SIGNED" = 1 ]; then
        start_opendkim
        extra+=$'\nsmtpd_milters = inet:127.0.0.1:8891\nmilter_default_action = tempfail'
    fi
    postfix_prepare "$extra"
    for k in $(seq 0 $((DOMAINS - 1))); do echo "d$k.campaign.test smtp:[$(hop "$k")]:$SINK_PORT"; done >"$PF_DIR/etc/transport"
    postmap "$PF_DIR/etc/transport"
    postfix_launch
}
stop_postfix() { postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true; [ "$SIGNED" = 1 ] && stop_opendkim; sleep 1; }
# Postfix's memory: every process of the instance (master, smtpd, smtp, qmgr ...) and
# OpenDKIM when it signs, as proportional set size (shared pages counted once over all of
# them, not once a process).
postfix_rss_kib() {
    local total=0 pid pss
    for pid in $(ps -eo pid=,user=,comm= | awk '($2 == "postfix" || $2 == "opendkim" || $3 == "master") {print $1}'); do
        pss=$(awk '/^Pss:/{print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
        total=$((total + ${pss:-0}))
    done
    echo "$total"
}

# Outbound connections to the sink right now.
out_conns() { ss -Htn state established "( dport = :$SINK_PORT )" 2>/dev/null | wc -l; }

# run_one RELAY → prints "rate cpu_us_per_msg peak_rss_mib peak_conns p50 p90 p99"
run_one() {
    local relay=$1
    "start_$relay"
    # shellcheck disable=SC2086 # SINK_ARGS: words
    /usr/bin/time -f "sink CPU %U+%S s" -o "$OUT/sink.time" "$BIN" sink --listen "0.0.0.0:$SINK_PORT" \
        --latency "$LATENCY" --jitter "$JITTER" --reply-latency "$REPLY_LATENCY" --exit-after-final "$MESSAGES" ${SINK_RULES[@]+"${SINK_RULES[@]}"} \
        --json "$OUT/sink.json" ${SINK_ARGS:-} >/dev/null 2>&1 &
    local sink_pid=$!
    wait_port "$SINK_PORT"
    local perf_pid=""
    if [ -n "${PROFILE:-}" ] && [ "$relay" = sluice ]; then
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$RELAY_PID" -o "$PROFILE" 2>/dev/null &
        perf_pid=$!
    fi
    local busy0; busy0=$(busy_jiffies)
    local t0; t0=$(date +%s.%N)
    /usr/bin/time -f "loadgen CPU %U+%S s" -o "$OUT/loadgen.time" "$BIN" loadgen --quiet \
        --target "127.0.0.1:$RELAY_PORT" --messages "$MESSAGES" --connections "$INJECT" \
        --size "$SIZES" --domains "$DOMAINS" --zipf "$ZIPF" --domain-suffix campaign.test \
        --from news@src.test --json "$OUT/loadgen.json" >/dev/null &
    local lg_pid=$!
    local peak_rss=0 peak_conns=0
    while kill -0 "$sink_pid" 2>/dev/null; do
        local r c
        r=$("${relay}_rss_kib"); c=$(out_conns)
        [ "$r" -gt "$peak_rss" ] && peak_rss=$r
        [ "$c" -gt "$peak_conns" ] && peak_conns=$c
        sleep 0.5
    done
    wait "$lg_pid"; wait "$sink_pid"
    [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
    local busy1; busy1=$(busy_jiffies)
    cat "$OUT/sink.time" "$OUT/loadgen.time" >&2
    "stop_$relay"
    local start last delivered refused corrupt
    start=$(json "$OUT/loadgen.json" start_unix_ms)
    last=$(json "$OUT/sink.json" last_message_unix_ms)
    delivered=$(json "$OUT/sink.json" messages)
    refused=$(json "$OUT/sink.json" scripted_5xx)
    corrupt=$(json "$OUT/sink.json" corrupt)
    [ $((delivered + refused)) -ge "$MESSAGES" ] || { echo "$relay delivered $delivered (+ $refused refused) of $MESSAGES" >&2; exit 1; }
    [ "$corrupt" = "0" ] || { echo "$relay corrupted $corrupt messages" >&2; exit 1; }
    local p50 p90 p99
    p50=$(grep -o '"p50":[0-9]*' "$OUT/sink.json" | cut -d: -f2)
    p90=$(grep -o '"p90":[0-9]*' "$OUT/sink.json" | cut -d: -f2)
    p99=$(grep -o '"p99":[0-9]*' "$OUT/sink.json" | cut -d: -f2)
    awk -v n="$MESSAGES" -v s="$start" -v l="$last" -v b0="$busy0" -v b1="$busy1" -v hz="$hz" \
        -v rss="$peak_rss" -v conns="$peak_conns" -v p50="$p50" -v p90="$p90" -v p99="$p99" 'BEGIN {
            # Machine busy time over the run, per message (loadgen and the sink included:
            # the same for both relays).
            printf "%.0f %.1f %.0f %d %d %d %d\n", n / ((l - s) / 1000), (b1 - b0) / hz / n * 1e6, rss / 1024, conns, p50, p90, p99 }'
}

machine=$(machine_line)
commit=$(commit_id)
report=$OUT/campaign.md
sign_speed=$("$BIN" sign-speed --key "$KEY")
raw_sign_rate=$(echo "$sign_speed" | grep -o 'aws-lc-rs [0-9]*' | cut -d' ' -f2)
{
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit: a campaign"
    echo
    echo "Machine: $machine. $MESSAGES messages over $DOMAINS domains (Zipf $ZIPF), sizes $SIZES;"
    echo "each domain its own next hop with $PER_DEST connections at most; the receivers answer the end"
    echo "of data after $LATENCY (+ up to $JITTER) and other replies after $REPLY_LATENCY; $INJECT injecting"
    echo "connections; scripted refusals: ${FAILURES:-none}${SINK_ARGS:+; sink $SINK_ARGS}; both relays fsync. CPU is the machine's busy time per message (the load"
    echo "generator and the sink included, alike for both). Memory: sluice's peak RSS; for Postfix"
    echo "(and OpenDKIM) the sum of its processes' proportional set sizes, sampled every 0.5 s."
    echo "RSA-2048 signing on one core alone:"
    echo "$sign_speed; OpenSSL $(openssl version | awk '{print $2}') (\`openssl speed\`):"
    echo "$(openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $6}') signatures/s."
} >"$report"

compare() {
    local label=$1
    {
        echo
        echo "### $label ($RUNS alternating runs)"
        echo
        echo "| run | relay | msg/s | CPU µs/msg | peak memory MiB | peak out conns | latency p50/p90/p99 ms |"
        echo "|---|---|---|---|---|---|---|"
    } >>"$report"
    : >"$OUT/c.before"; : >"$OUT/c.sluice"; : >"$OUT/c.postfix"
    for i in $(seq 1 "$RUNS"); do
        for relay in $RELAYS; do
            [ -n "$ONLY" ] && [ "$relay" != "$ONLY" ] && continue
            read -r rate cpu rss conns p50 p90 p99 < <(run_one "$relay")
            echo "$rate" >>"$OUT/c.$relay"
            local name=$relay; [ "$relay" = before ] && name="sluice at $BASELINE"
            echo "| $i | $name | $rate | $cpu | $rss | $conns | $p50 / $p90 / $p99 |" >>"$report"
            echo "$label run $i: $relay $rate msg/s, $cpu µs/msg, $rss MiB, $conns conns, p99 $p99 ms" >&2
        done
    done
    local s="" p=""
    [ -s "$OUT/c.sluice" ] && s=$(median <"$OUT/c.sluice")
    [ -s "$OUT/c.postfix" ] && p=$(median <"$OUT/c.postfix")
    echo >>"$report"
    if [ -n "$s" ] && [ -n "$p" ]; then
        echo "Median: sluice $s msg/s, Postfix $p msg/s: **$(awk -v a="$s" -v b="$p" 'BEGIN{printf "%.1f", a/b}')×**." >>"$report"
    else
        echo "Median: ${s:+sluice $s}${p:+Postfix $p} msg/s." >>"$report"
    fi
    if [ "$SIGNED" = 1 ] && [ -n "$s" ] && [ -n "$raw_sign_rate" ]; then
        echo "sluice signed $s messages a second: $(awk -v a="$s" -v r="$raw_sign_rate" -v n="$(nproc)" \
            'BEGIN{printf "%.0f", 100 * a / (r * n)}')% of what this machine's $(nproc) cores sign alone ($raw_sign_rate a second each, aws-lc-rs), the load generator and the sink sharing them." >>"$report"
    fi
    if [ -s "$OUT/c.before" ] && [ -n "$s" ]; then
        local b; b=$(median <"$OUT/c.before")
        echo "Before ($BASELINE): $b msg/s; now $(awk -v a="$s" -v b="$b" 'BEGIN{printf "%.2f", a/b}')× that." >>"$report"
    fi
}

if [ "$SIGN" != rsa ]; then SIGNED=0; compare "Unsigned"; fi
if [ "$SIGN" != off ]; then SIGNED=1; compare "Every message signed, RSA-2048 (Postfix: OpenDKIM milter)"; fi
finish_report
