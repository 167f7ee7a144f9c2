#!/usr/bin/env bash
# Kernel crossings per message (issue 24): the relay, the load generator and the sink in the
# same run, each under `perf stat` (tracepoints: every system call, `io_uring_enter`, io_uring
# requests punted to kernel worker threads; context switches; CPU). The lab shape: MESSAGES × 1 KiB
# from `sluice loadgen` (CONNECTIONS connections) through sluice (fsync'd spool) to `sluice sink`.
#
#   perf/count.sh                       # 30,000 messages, io-backend auto
#   BACKEND=epoll perf/count.sh         # the relay on its epoll backend
#   SHARDS=1 RUNS=3 perf/count.sh
#   SQPOLL=yes perf/count.sh            # io-uring-sqpoll yes: kernel threads poll the rings
#   MULTISHOT=yes perf/count.sh         # io-uring-multishot-receive yes
#   REGISTERED=yes perf/count.sh        # io-uring-registered-files yes
#   SINK_ARGS=--chunking perf/count.sh  # the sink offers CHUNKING: the relay sends BDAT
#   SLUICE_BIN=/tmp/sluice-before perf/count.sh   # another build (A/B runs in one session)
#   SEGMENT=16M MESSAGES=200000 perf/count.sh  # spool-segment-size: segments filled, deleted
#                                           # and replaced within the run (a long-running relay)
#   PROFILE=/tmp/relay.perf perf/count.sh   # also records where the relay's CPU goes
#                                           # (perf record, cpu-clock; the counts then include it)
#
# Rows (with date, commit and machine) are appended to perf/RESULTS.md. Needs root (tracefs).
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/lib.sh
MESSAGES=${MESSAGES:-30000}
CONNECTIONS=${CONNECTIONS:-20}
BACKEND=${BACKEND:-auto}
SHARDS=${SHARDS:-}
RUNS=${RUNS:-1}
SQPOLL=${SQPOLL:-no}
MULTISHOT=${MULTISHOT:-} # said only when set: older builds (SLUICE_BIN) lack the directive
REGISTERED=${REGISTERED:-} # the same
SEGMENT=${SEGMENT:-}
RELAY_PORT=${RELAY_PORT:-2635}
SINK_PORT=${SINK_PORT:-2636}
OUT=perf/out/count
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
command -v perf >/dev/null || { echo "perf is not installed (linux-perf)" >&2; exit 1; }
if [ -z "${SLUICE_BIN:-}" ]; then
    cargo build --release --locked -q
fi
BIN=${SLUICE_BIN:-$PWD/target/release/sluice}
EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_queue_async_work,context-switches,task-clock

# counts FILE MESSAGES: "syscalls io_uring_enter punted switches cpu_us" per message.
counts() {
    awk -F, -v n="$2" '
        $3 == "raw_syscalls:sys_enter" { s = $1 }
        $3 == "syscalls:sys_enter_io_uring_enter" { e = $1 }
        $3 == "io_uring:io_uring_queue_async_work" { p = $1 }
        $3 == "context-switches" { c = $1 }
        $3 == "task-clock" { t = $1 }  # milliseconds
        END { printf "%.2f %.2f %.2f %.2f %.1f\n", s / n, e / n, p / n, c / n, t * 1000 / n }' "$1"
}

run_once() {
    local dir=/tmp/sluice-count
    rm -rf "$dir" && mkdir -p "$dir"
    cat >"$dir/sluice.conf" <<EOF
host-name count.sluice
smtp-listener 127.0.0.1:$RELAY_PORT
spool $dir/spool
io-backend $BACKEND
io-uring-sqpoll $SQPOLL
${MULTISHOT:+io-uring-multishot-receive $MULTISHOT}
${REGISTERED:+io-uring-registered-files $REGISTERED}
${SHARDS:+shards $SHARDS}
${SEGMENT:+spool-segment-size $SEGMENT}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain *>
    smtp-hosts [127.0.0.1]:$SINK_PORT
    max-smtp-out $CONNECTIONS
</domain>
<acct-file $dir/acct.csv>
    records d,b,t
</acct-file>
EOF
    local busy0
    busy0=$(busy_jiffies)
    # shellcheck disable=SC2086 # SINK_ARGS: words
    perf stat -x, -e "$EVENTS" -o "$OUT/sink.stat" -- "$BIN" sink --listen "127.0.0.1:$SINK_PORT" \
        --exit-after "$MESSAGES" --json "$OUT/sink.json" ${SINK_ARGS:-} >/dev/null 2>&1 &
    local sink_perf=$!
    wait_port "$SINK_PORT"
    perf stat -x, -e "$EVENTS" -o "$OUT/relay.stat" -- "$BIN" run -c "$dir/sluice.conf" 2>"$dir/sluice.log" &
    local relay_perf=$!
    wait_port "$RELAY_PORT"
    local record=""
    if [ -n "${PROFILE:-}" ]; then
        perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -o "$PROFILE" \
            -p "$(pgrep -P "$relay_perf" | head -1)" 2>/dev/null &
        record=$!
    fi
    perf stat -x, -e "$EVENTS" -o "$OUT/loadgen.stat" -- "$BIN" loadgen --quiet --target "127.0.0.1:$RELAY_PORT" \
        --messages "$MESSAGES" --connections "$CONNECTIONS" --size 1K --json "$OUT/loadgen.json" >/dev/null
    wait "$sink_perf"
    [ -n "$record" ] && { kill -INT "$record"; wait "$record" || true; }
    pkill -TERM -P "$relay_perf" -x "$(basename "$BIN" | cut -c1-15)"
    wait "$relay_perf" || true
    local delivered
    delivered=$(json "$OUT/sink.json" messages)
    [ "$delivered" = "$MESSAGES" ] || { echo "delivered $delivered of $MESSAGES" >&2; exit 1; }
    local backend
    backend=$(grep -o 'backend="[a-z_]*"' "$dir/sluice.log" | head -1 | cut -d'"' -f2)
    # The whole machine's busy time (kernel threads included: io_uring's workers are the
    # relay's threads, but a flush finished by a kernel workqueue is nobody's).
    local machine_us
    machine_us=$(awk -v b0="$busy0" -v b1="$(busy_jiffies)" -v n="$MESSAGES" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.1f", (b1 - b0) * 1000000 / hz / n }')
    echo "$backend $(counts "$OUT/relay.stat" "$MESSAGES") $(counts "$OUT/loadgen.stat" "$MESSAGES") $(counts "$OUT/sink.stat" "$MESSAGES") $machine_us $(json "$OUT/loadgen.json" messages_per_s)"
}

report=$OUT/report.md
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(commit_id)${SLUICE_BIN:+ (binary $SLUICE_BIN)}: kernel crossings per message (perf/count.sh)"
    echo
    echo "Machine: $(machine_line). $MESSAGES × 1 KiB, $CONNECTIONS connections, fsync'd spool${SEGMENT:+ in $SEGMENT segments}${SHARDS:+, $SHARDS shards}; relay io-backend $BACKEND, io-uring-sqpoll $SQPOLL, io-uring-multishot-receive ${MULTISHOT:-no}, io-uring-registered-files ${REGISTERED:-no}${SINK_ARGS:+; sink $SINK_ARGS}."
    echo
    echo "Machine CPU: the whole machine's busy time per message over the run (the three programs, perf, and kernel threads nobody's: a workqueue finishing a flush)."
    echo
    echo "| run | backend | relay syscalls | relay io_uring_enter | relay punted | relay ctx switches | relay CPU µs | loadgen syscalls | loadgen CPU µs | sink syscalls | sink CPU µs | relay CPU ÷ (loadgen + sink) | machine CPU µs | msg/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$report"
for i in $(seq 1 "$RUNS"); do
    read -r backend rs re rp rc rt ls _ _ _ lt ss _ _ _ st mt mps < <(run_once)
    ratio=$(awk -v r="$rt" -v l="$lt" -v s="$st" 'BEGIN{printf "%.2f", r / (l + s)}')
    echo "| $i | $backend | $rs | $re | $rp | $rc | $rt | $ls | $lt | $ss | $st | $ratio× | $mt | ${mps%.*} |" >>"$report"
    echo "run $i ($backend): relay $rs syscalls ($re io_uring_enter, $rp punted), $rc switches, $rt µs CPU per message; loadgen $ls/$lt µs, sink $ss/$st µs; machine $mt µs; ${mps%.*} msg/s" >&2
done
cat "$report"
cat "$report" >>perf/RESULTS.md
