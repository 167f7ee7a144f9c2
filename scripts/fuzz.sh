#!/usr/bin/env bash
# Fuzzes every target in fuzz/ (cargo-fuzz, libFuzzer, the machine's nightly toolchain) for
# SECONDS each (default 15: the short run CI does; run for hours by hand, e.g.
# `scripts/fuzz.sh 3600`). A crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/; add it to fuzz/corpus/TARGET/ once fixed, as a regression seed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-15}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cd fuzz
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    echo "fuzz: $target for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E "stat::number_of_executed_units|Done|SUMMARY|panicked|ERROR" || true
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "fuzz: $target crashed; input(s) in fuzz/artifacts/$target" >&2
        exit 1
    fi
done
