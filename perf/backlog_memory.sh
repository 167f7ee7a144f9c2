#!/usr/bin/env bash
# Memory of a growing backlog: a running sluice takes messages for a destination that does
# not answer, in steps; after each step the daemon's anonymous memory (heap and stacks, not
# the mapped spool) is read from /proc. A queue keeps 10,000 jobs in memory and spills the
# rest to a file, so the heap should stop growing once the window is full. Figures go to
# perf/out/backlog_memory.txt; copy them into perf/RESULTS.md.
#
#   perf/backlog_memory.sh                  # steps of 100,000 messages up to 500,000
#   STEP=50000 STEPS=4 perf/backlog_memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${STEP:-100000}
STEPS=${STEPS:-5}
OUT=perf/out
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -q
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/sluice
WORK=$(mktemp -d)
PORT=${PORT:-2735}
API=${API:-2736}
DEAD=${DEAD:-2737} # nothing listens here
cat > "$WORK/sluice.conf" <<CONF
host-name backlog.test
smtp-listener 127.0.0.1:$PORT
spool $WORK/spool
http-mgmt-port 127.0.0.1:$API
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain backlog.test>
    smtp-hosts [127.0.0.1]:$DEAD
    retry-after 1h
</domain>
CONF
"$BIN" run -c "$WORK/sluice.conf" 2>"$WORK/log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
anon() { awk '/RssAnon/{print int($2/1024)}' /proc/$pid/status; }
{
    echo "date $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) cpus $(nproc)"
    echo "queued_messages heap_and_stacks_mib"
    echo "0 $(anon)"
    for i in $(seq 1 "$STEPS"); do
        "$BIN" loadgen --quiet --target "127.0.0.1:$PORT" --messages "$STEP" --connections 8 \
            --domain-suffix backlog.test --size 512 --duration 600s --json "$WORK/lg.json" >/dev/null
        sleep 1
        echo "$((i * STEP)) $(anon)"
    done
    queued=$(curl -sf "127.0.0.1:$API/status?format=json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["rcpt"])')
    echo "queued_recipients_in_status $queued"
} | tee "$OUT/backlog_memory.txt"
