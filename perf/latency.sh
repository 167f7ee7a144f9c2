#!/usr/bin/env bash
# Transactional latency (issue 26): from a message's send by `sluice loadgen` (its 250 comes
# within a millisecond of it) to its arrival at the receiver (`sluice sink`, answering at once),
# for transactional mail sent at TX_RATE a second on one connection from its own source
# (127.0.0.2) through its own VMTA:
#   - idle: nothing else going on;
#   - flood: while a DKIM-signed bulk flood (BULK_MESSAGES × BULK_SIZE, BULK_CONNECTIONS
#     connections, 50 domains) is injected and delivered to another receiver.
# Each in the same run, with the relay's SHARDS shards shared by all, and (CLASSES=1, the
# default) with the transactional source and VMTA in a traffic class of one shard of their own.
#
#   perf/latency.sh
#   BULK_MESSAGES=100000 BULK_SIZE=10K BULK_CONNECTIONS=50 perf/latency.sh   # the issue's flood
#   SLUICE_BIN=/tmp/sluice-before perf/latency.sh                            # another build (A/B)
#
# Rows (with date, commit and machine) are appended to perf/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/lib.sh
TX_RATE=${TX_RATE:-20}
TX_MESSAGES=${TX_MESSAGES:-200}
BULK_MESSAGES=${BULK_MESSAGES:-20000}
BULK_SIZE=${BULK_SIZE:-10K}
BULK_CONNECTIONS=${BULK_CONNECTIONS:-50}
SHARDS=${SHARDS:-3}
CLASSES=${CLASSES:-1}
RELAY_PORT=${RELAY_PORT:-2645}
TX_SINK=${TX_SINK:-2646}
BULK_SINK=${BULK_SINK:-2647}
OUT=perf/out/latency
WORK=/tmp/sluice-latency
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
if [ -z "${SLUICE_BIN:-}" ]; then
    cargo build --release --locked -q
fi
BIN=${SLUICE_BIN:-$PWD/target/release/sluice}
rm -rf "$WORK" && mkdir -p "$WORK"
KEY=$WORK/dkim.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY" 2>/dev/null

# config CLASS: the relay's configuration, the transactional VMTA in a class of its own when
# CLASS is 1.
config() {
    local class=""
    if [ "$1" = 1 ]; then
        class="<traffic-class transactional>
    shards 1
</traffic-class>"
    fi
    cat <<EOF
host-name latency.sluice
smtp-listener 127.0.0.1:$RELAY_PORT
spool $WORK/spool
shards $SHARDS
domain-key perf,src.test,$KEY
$class
<virtual-mta tx>
    ${class:+traffic-class transactional}
</virtual-mta>
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<source 127.0.0.2>
    always-allow-relaying yes
    default-virtual-mta tx
    ${class:+traffic-class transactional}
</source>
<domain tx.test>
    smtp-hosts [127.0.0.1]:$TX_SINK
</domain>
<domain *>
    smtp-hosts [127.0.0.1]:$BULK_SINK
    max-smtp-out 50
    dkim-sign yes
</domain>
EOF
}

# phase NAME FLOOD: the transactional latency (p50 p90 p99 max, ms) with or without the flood.
phase() {
    local name=$1 flood=$2
    "$BIN" sink --listen "127.0.0.1:$TX_SINK" --exit-after "$TX_MESSAGES" --json "$OUT/$name.tx.json" >/dev/null 2>&1 &
    local tx_sink=$!
    wait_port "$TX_SINK"
    local bulk=""
    if [ "$flood" = 1 ]; then
        "$BIN" loadgen --quiet --target "127.0.0.1:$RELAY_PORT" --messages "$BULK_MESSAGES" --size "$BULK_SIZE" \
            --connections "$BULK_CONNECTIONS" --domains 50 --domain-suffix bulk.test --from bulk@src.test \
            --json "$OUT/$name.bulk.json" >/dev/null &
        bulk=$!
        sleep 2 # the flood under way
    fi
    "$BIN" loadgen --quiet --target "127.0.0.1:$RELAY_PORT" --messages "$TX_MESSAGES" --rate "$TX_RATE" \
        --connections 1 --domain-suffix tx.test --from tx@src.test --source 127.0.0.2 \
        --json "$OUT/$name.loadgen.json" >/dev/null
    wait "$tx_sink"
    [ -n "$bulk" ] && wait "$bulk"
    local f=$OUT/$name.tx.json
    echo "$(json "$f" p50) $(json "$f" p90) $(json "$f" p99) $(json "$f" max)"
}

report=$OUT/report.md
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(commit_id)${SLUICE_BIN:+ (binary $SLUICE_BIN)}: transactional latency, idle and under a bulk flood (perf/latency.sh)"
    echo
    echo "Machine: $(machine_line). $SHARDS shards. Transactional: $TX_MESSAGES messages at $TX_RATE/s on one connection from 127.0.0.2 through VMTA \`tx\` to a receiver answering at once; latency from the load generator's send to the receiver's arrival. Flood: $BULK_MESSAGES × $BULK_SIZE, DKIM-signed (RSA 2048), $BULK_CONNECTIONS connections, 50 domains, to another receiver answering at once."
    echo
    echo "| traffic class | phase | p50 ms | p90 ms | p99 ms | max ms | flood injected msg/s |"
    echo "|---|---|---|---|---|---|---|"
} >"$report"
for class in $(seq 0 "$CLASSES"); do
    config "$class" >"$WORK/sluice.conf"
    rm -rf "$WORK/spool"
    "$BIN" sink --listen "127.0.0.1:$BULK_SINK" >/dev/null 2>&1 &
    bulk_sink=$!
    "$BIN" run -c "$WORK/sluice.conf" 2>"$WORK/sluice.$class.log" &
    relay=$!
    wait_port "$RELAY_PORT"
    wait_port "$BULK_SINK"
    label=$([ "$class" = 1 ] && echo "transactional, 1 shard" || echo "none (shared shards)")
    read -r p50 p90 p99 max < <(phase "idle-$class" 0)
    echo "| $label | idle | $p50 | $p90 | $p99 | $max | |" >>"$report"
    read -r p50 p90 p99 max < <(phase "flood-$class" 1)
    rate=$(json "$OUT/flood-$class.bulk.json" messages_per_s || true)
    echo "| $label | flood | $p50 | $p90 | $p99 | $max | ${rate:-} |" >>"$report"
    kill -TERM "$relay" "$bulk_sink" 2>/dev/null || true
    wait "$relay" "$bulk_sink" 2>/dev/null || true
done
finish_report
