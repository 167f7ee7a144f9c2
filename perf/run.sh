#!/usr/bin/env bash
# End-to-end benchmark: sluice versus Postfix on this machine, same load generator
# (sluice loadgen) and the same sink (sluice sink), both relays with durable spools (fsync on).
# Runs alternate (sluice, Postfix, sluice, ...) so drift on a shared machine hits both alike.
# Rate = messages / (first injection .. last delivery at the sink). Relay CPU time is the
# machine's busy time during the run minus loadgen's and the sink's own CPU time.
#
#   perf/run.sh                 # main comparison (RUNS each, 1 KiB) + size and domain sweeps
#   RUNS=5 MESSAGES=50000 perf/run.sh
#   QUICK=1 perf/run.sh         # main comparison only
#   DKIM_ONLY=1 perf/run.sh     # only sluice with DKIM signing off, RSA-2048, Ed25519
#   BASELINE=8a3fbf51 perf/run.sh  # this build against an older commit's, alternating
#   CLUSTER_ONLY=1 perf/run.sh  # one host with <cluster> (a local redis-server) vs without
#   BACKENDS_ONLY=1 perf/run.sh # sluice on its io_uring backend vs its epoll backend (containers)
#   SINK_ARGS=--chunking perf/run.sh  # the sink offers CHUNKING (as Gmail, Outlook, Postfix
#                               # do): sluice sends BDAT, Postfix's client DATA (it has no BDAT)
#
# Results (with date, commit and machine) are appended to perf/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/lib.sh
RUNS=${RUNS:-3}
MESSAGES=${MESSAGES:-20000}
CONNECTIONS=${CONNECTIONS:-20}
OUT=perf/out
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

bash scripts/install-test-deps.sh >/dev/null
cargo build --release --locked -q
BIN=$PWD/target/release/sluice
RELAY_BIN=$BIN # the relay under test (BASELINE runs alternate it with the older build)
RELAY_PORT=${RELAY_PORT:-2625}
SINK_PORT=${SINK_PORT:-2626}
PF_DIR=/tmp/sluice-postfix # must match scripts/install-test-deps.sh

hz=$(getconf CLK_TCK)


DKIM_KEY="" # a key file: sluice signs every message with it (domain-key for src.test)
CLUSTER_CONF="" # global lines (a <cluster> block) and <domain *> lines for a fleet run
CLUSTER_DOMAIN=""
IO_BACKEND=auto # the relay's io-backend
start_sluice() {
    rm -rf /tmp/sluice-perf && mkdir -p /tmp/sluice-perf
    local dkim_key="" dkim_sign=""
    if [ -n "$DKIM_KEY" ]; then
        dkim_key="domain-key perf,src.test,$DKIM_KEY"
        dkim_sign="dkim-sign yes"
    fi
    cat >/tmp/sluice-perf/sluice.conf <<EOF
host-name perf.sluice
$dkim_key
smtp-listener 127.0.0.1:$RELAY_PORT
spool /tmp/sluice-perf/spool
io-backend $IO_BACKEND
$CLUSTER_CONF
<source 127.0.0.1>
    always-allow-relaying yes
    max-message-size 200M
</source>
<domain *>
    smtp-hosts [127.0.0.1]:$SINK_PORT
    max-smtp-out $CONNECTIONS
    $dkim_sign
    $CLUSTER_DOMAIN
</domain>
<acct-file /tmp/sluice-perf/acct.csv>
    records d,b,t
</acct-file>
EOF
    "$RELAY_BIN" run -c /tmp/sluice-perf/sluice.conf 2>/tmp/sluice-perf/sluice.log &
    RELAY_PID=$!
    wait_port "$RELAY_PORT"
}
stop_sluice() { kill "$RELAY_PID"; wait "$RELAY_PID" || true; }

start_postfix() {
    postfix_prepare "relayhost = [127.0.0.1]:$SINK_PORT
default_destination_concurrency_limit = $CONNECTIONS
smtp_destination_concurrency_limit = $CONNECTIONS
default_process_limit = 200"
    postfix_launch
}
stop_postfix() { postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true; sleep 1; }

# run_one RELAY SIZE DOMAINS MESSAGES → prints "rate cpu_us_per_msg"
run_one() {
    local relay=$1 size=$2 domains=$3 messages=$4
    "start_$relay"
    # shellcheck disable=SC2086 # SINK_ARGS: words
    /usr/bin/time -f "%U %S" -o "$OUT/sink.time" "$BIN" sink --listen "127.0.0.1:$SINK_PORT" \
        --exit-after "$messages" --json "$OUT/sink.json" ${SINK_ARGS:-} >/dev/null 2>&1 &
    local sink_pid=$!
    wait_port "$SINK_PORT"
    local busy0; busy0=$(busy_jiffies)
    /usr/bin/time -f "%U %S" -o "$OUT/loadgen.time" "$BIN" loadgen --quiet --target "127.0.0.1:$RELAY_PORT" \
        --messages "$messages" --connections "$CONNECTIONS" --size "$size" --domains "$domains" \
        --json "$OUT/loadgen.json" >/dev/null
    wait "$sink_pid"
    local busy1; busy1=$(busy_jiffies)
    "stop_$relay"
    local start last delivered
    start=$(json "$OUT/loadgen.json" start_unix_ms)
    last=$(json "$OUT/sink.json" last_message_unix_ms)
    delivered=$(json "$OUT/sink.json" messages)
    local corrupt; corrupt=$(json "$OUT/sink.json" corrupt)
    [ "$delivered" = "$messages" ] || { echo "$relay delivered $delivered of $messages" >&2; exit 1; }
    [ "$corrupt" = "0" ] || { echo "$relay corrupted $corrupt messages" >&2; exit 1; }
    awk -v n="$messages" -v s="$start" -v l="$last" -v b0="$busy0" -v b1="$busy1" -v hz="$hz" \
        -v lt="$(cat "$OUT/loadgen.time")" -v st="$(cat "$OUT/sink.time")" 'BEGIN {
            split(lt, a, " "); split(st, c, " ");
            tools = a[1] + a[2] + c[1] + c[2];
            relay_cpu = (b1 - b0) / hz - tools; if (relay_cpu < 0) relay_cpu = 0;
            printf "%.0f %.1f\n", n / ((l - s) / 1000), relay_cpu / n * 1e6 }'
}

# The tools must never be the bottleneck: loadgen → sink against smtp-source → smtp-sink.
tools_compare() {
    local n=$((MESSAGES * 5))
    "$BIN" sink --listen "127.0.0.1:$SINK_PORT" --exit-after "$n" >/dev/null 2>&1 &
    local sink_pid=$!
    wait_port "$SINK_PORT"
    local t0; t0=$(date +%s.%N)
    "$BIN" loadgen --quiet --target "127.0.0.1:$SINK_PORT" --messages "$n" --connections "$CONNECTIONS" --size 1K >/dev/null
    wait "$sink_pid"
    local ours; ours=$(awk -v n="$n" -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%.0f", n/(t1-t0)}')
    smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
    local pf_sink=$!
    wait_port "$SINK_PORT"
    t0=$(date +%s.%N)
    smtp-source -s "$CONNECTIONS" -m "$n" -l 1024 -f a@src.test -t r@sink.test "127.0.0.1:$SINK_PORT"
    local theirs; theirs=$(awk -v n="$n" -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%.0f", n/(t1-t0)}')
    kill "$pf_sink"; wait "$pf_sink" 2>/dev/null || true
    echo "$ours $theirs"
}


# Sluice alone: DKIM off, RSA-2048, Ed25519, alternating, 1 KiB.
dkim_compare() {
    local keys=/tmp/sluice-perf-keys
    mkdir -p "$keys"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$keys/rsa.pem" 2>/dev/null
    openssl genpkey -algorithm ed25519 -out "$keys/ed.pem"
    {
        echo
        echo "### DKIM signing on vs off (sluice, 1 KiB, 1 domain, $MESSAGES messages, $RUNS alternating runs)"
        echo
        echo "| run | off msg/s | off CPU µs/msg | RSA-2048 msg/s | RSA CPU µs/msg | Ed25519 msg/s | Ed25519 CPU µs/msg |"
        echo "|---|---|---|---|---|---|---|"
    } >>"$report"
    : >"$OUT/dkim.off"; : >"$OUT/dkim.rsa"; : >"$OUT/dkim.ed"
    for i in $(seq 1 "$RUNS"); do
        DKIM_KEY=""; read -r o_rate o_cpu < <(run_one sluice 1K 1 "$MESSAGES")
        DKIM_KEY="$keys/rsa.pem"; read -r r_rate r_cpu < <(run_one sluice 1K 1 "$MESSAGES")
        DKIM_KEY="$keys/ed.pem"; read -r e_rate e_cpu < <(run_one sluice 1K 1 "$MESSAGES")
        DKIM_KEY=""
        echo "$o_rate" >>"$OUT/dkim.off"; echo "$r_rate" >>"$OUT/dkim.rsa"; echo "$e_rate" >>"$OUT/dkim.ed"
        echo "| $i | $o_rate | $o_cpu | $r_rate | $r_cpu | $e_rate | $e_cpu |" >>"$report"
        echo "dkim run $i: off $o_rate, rsa $r_rate, ed25519 $e_rate msg/s" >&2
    done
    local off rsa ed
    off=$(median <"$OUT/dkim.off"); rsa=$(median <"$OUT/dkim.rsa"); ed=$(median <"$OUT/dkim.ed")
    {
        echo
        echo "Median: off $off msg/s, RSA-2048 $rsa msg/s ($(awk -v a="$rsa" -v b="$off" 'BEGIN{printf "%.2f", a/b}')× of off)," \
            "Ed25519 $ed msg/s ($(awk -v a="$ed" -v b="$off" 'BEGIN{printf "%.2f", a/b}')× of off)."
    } >>"$report"
}

machine=$(machine_line)
commit=$(commit_id)
report=$OUT/report.md
{
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
    echo
    echo "Machine: $machine. Loadgen: $CONNECTIONS connections, pipelining; both relays fsync their queues${SINK_ARGS:+; sink $SINK_ARGS}."
} >"$report"
# alternate TITLE LABEL_A SETUP_A LABEL_B SETUP_B: RUNS alternating runs of the 1 KiB lab shape,
# each after its setup function (which sets what start_sluice reads), their rows into the report
# under TITLE; prints the two medians.
alternate() {
    local title=$1 a_label=$2 a_setup=$3 b_label=$4 b_setup=$5
    {
        echo
        echo "### $title (1 KiB, 1 domain, $MESSAGES messages, $CONNECTIONS connections, $RUNS alternating runs)"
        echo
        echo "| run | $a_label msg/s | $a_label CPU µs/msg | $b_label msg/s | $b_label CPU µs/msg |"
        echo "|---|---|---|---|---|"
    } >>"$report"
    : >"$OUT/a.rates"; : >"$OUT/b.rates"
    local i a_rate a_cpu b_rate b_cpu
    for i in $(seq 1 "$RUNS"); do
        "$a_setup"; read -r a_rate a_cpu < <(run_one sluice 1K 1 "$MESSAGES")
        "$b_setup"; read -r b_rate b_cpu < <(run_one sluice 1K 1 "$MESSAGES")
        echo "$a_rate" >>"$OUT/a.rates"; echo "$b_rate" >>"$OUT/b.rates"
        echo "| $i | $a_rate | $a_cpu | $b_rate | $b_cpu |" >>"$report"
        echo "run $i: $a_label $a_rate msg/s, $b_label $b_rate msg/s" >&2
    done
    echo "$(median <"$OUT/a.rates") $(median <"$OUT/b.rates")"
}

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

# This build against an older commit's (built in a worktree), the same load, alternating.
baseline_compare() {
    local base=$1 n o
    OLD_BIN=$(build_at "$base")
    this_build() { RELAY_BIN=$BIN; }
    old_build() { RELAY_BIN=$OLD_BIN; }
    read -r n o < <(alternate "This build against commit $base" this this_build "$base" old_build)
    RELAY_BIN=$BIN
    echo -e "\nMedian: this build $n msg/s, $base $o msg/s: **$(ratio "$n" "$o")×**." >>"$report"
}

# One host with a <cluster> (fleet limits far above the load, so every message takes a
# leased token and every connection a leased slot) against the same host without one.
cluster_compare() {
    local port=${REDIS_PORT:-6390} a f
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
    local redis_pid=$!
    wait_port "$port"
    CLUSTER_PORT=$port
    alone() { CLUSTER_CONF=""; CLUSTER_DOMAIN=""; }
    fleet() {
        CLUSTER_CONF=$(printf '<cluster>\n redis-server 127.0.0.1:%s\n node-name perf\n</cluster>' "$CLUSTER_PORT")
        CLUSTER_DOMAIN=$(printf 'cluster-max-msg-rate 1000000/s\n cluster-max-smtp-out 1000')
    }
    read -r a f < <(alternate "One host with <cluster> (redis-server on loopback) vs without" without alone with fleet)
    alone
    kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
    echo -e "\nMedian: without $a msg/s, with <cluster> $f msg/s: **$(ratio "$f" "$a")×**." >>"$report"
}

# The relay on its io_uring backend against its epoll backend (what it runs where io_uring is
# refused); the load generator and the sink stay on io_uring both times.
backend_compare() {
    local u e
    on_io_uring() { IO_BACKEND=io_uring; }
    on_epoll() { IO_BACKEND=epoll; }
    read -r u e < <(alternate "io_uring backend vs epoll backend" io_uring on_io_uring epoll on_epoll)
    IO_BACKEND=auto
    echo -e "\nMedian: io_uring $u msg/s, epoll $e msg/s: **epoll/io_uring = $(ratio "$e" "$u")×** (must be ≥ 0.7×)." >>"$report"
}

if [ -n "${BACKENDS_ONLY:-}" ]; then
    backend_compare
    finish_report
    exit 0
fi
if [ -n "${CLUSTER_ONLY:-}" ]; then
    cluster_compare
    finish_report
    exit 0
fi
if [ -n "${BASELINE:-}" ]; then
    baseline_compare "$BASELINE"
    finish_report
    exit 0
fi
if [ -n "${DKIM_ONLY:-}" ]; then
    dkim_compare
    finish_report
    exit 0
fi
{
    echo
    echo "### 1 KiB messages, 1 domain, $MESSAGES messages, $RUNS alternating runs each"
    echo
    echo "| run | sluice msg/s | sluice CPU µs/msg | Postfix msg/s | Postfix CPU µs/msg |"
    echo "|---|---|---|---|---|"
} >>"$report"
: >"$OUT/sluice.rates"; : >"$OUT/postfix.rates"
for i in $(seq 1 "$RUNS"); do
    read -r s_rate s_cpu < <(run_one sluice 1K 1 "$MESSAGES")
    read -r p_rate p_cpu < <(run_one postfix 1K 1 "$MESSAGES")
    echo "$s_rate" >>"$OUT/sluice.rates"; echo "$p_rate" >>"$OUT/postfix.rates"
    echo "| $i | $s_rate | $s_cpu | $p_rate | $p_cpu |" >>"$report"
    echo "run $i: sluice $s_rate msg/s ($s_cpu µs CPU/msg), Postfix $p_rate msg/s ($p_cpu µs CPU/msg)" >&2
done
s_med=$(median <"$OUT/sluice.rates"); p_med=$(median <"$OUT/postfix.rates")
ratio=$(awk -v a="$s_med" -v b="$p_med" 'BEGIN{printf "%.1f", a/b}')
{
    echo
    echo "Median: sluice $s_med msg/s, Postfix $p_med msg/s: **sluice/Postfix = ${ratio}×**."
} >>"$report"
echo "median: sluice $s_med msg/s, Postfix $p_med msg/s, ratio ${ratio}x" >&2

read -r lg_rate ss_rate < <(tools_compare)
{
    echo
    echo "### The tools alone ($((MESSAGES * 5)) × 1 KiB, $CONNECTIONS connections)"
    echo
    echo "sluice loadgen → sluice sink: $lg_rate msg/s; Postfix smtp-source → smtp-sink: $ss_rate msg/s:" \
        "**$(awk -v a="$lg_rate" -v b="$ss_rate" 'BEGIN{printf "%.1f", a/b}')×** (must be ≥ 3×)."
} >>"$report"
echo "tools: loadgen→sink $lg_rate msg/s, smtp-source→smtp-sink $ss_rate msg/s" >&2

if [ -z "${QUICK:-}" ]; then
    dkim_compare
    {
        echo
        echo "### Size sweep (1 domain; one run each)"
        echo
        echo "| size | messages | sluice msg/s | sluice CPU µs/msg | Postfix msg/s | Postfix CPU µs/msg | ratio |"
        echo "|---|---|---|---|---|---|---|"
    } >>"$report"
    for spec in "1K $MESSAGES" "10K $((MESSAGES / 2))" "100K $((MESSAGES / 10))"; do
        read -r size n <<<"$spec"
        read -r s_rate s_cpu < <(run_one sluice "$size" 1 "$n")
        read -r p_rate p_cpu < <(run_one postfix "$size" 1 "$n")
        echo "| $size | $n | $s_rate | $s_cpu | $p_rate | $p_cpu | $(awk -v a="$s_rate" -v b="$p_rate" 'BEGIN{printf "%.1f", a/b}')× |" >>"$report"
        echo "size $size: sluice $s_rate, Postfix $p_rate" >&2
    done
    {
        echo
        echo "### Domain sweep (1 KiB; one run each)"
        echo
        echo "| domains | messages | sluice msg/s | sluice CPU µs/msg | Postfix msg/s | Postfix CPU µs/msg | ratio |"
        echo "|---|---|---|---|---|---|---|"
    } >>"$report"
    for domains in 1 100 10000; do
        read -r s_rate s_cpu < <(run_one sluice 1K "$domains" "$MESSAGES")
        read -r p_rate p_cpu < <(run_one postfix 1K "$domains" "$MESSAGES")
        echo "| $domains | $MESSAGES | $s_rate | $s_cpu | $p_rate | $p_cpu | $(awk -v a="$s_rate" -v b="$p_rate" 'BEGIN{printf "%.1f", a/b}')× |" >>"$report"
        echo "domains $domains: sluice $s_rate, Postfix $p_rate" >&2
    done
fi
finish_report
