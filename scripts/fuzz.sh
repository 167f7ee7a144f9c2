#!/usr/bin/env bash
# A short, repeatable run of every fuzz target in fuzz/ (cargo-fuzz, libFuzzer, the machine's
# nightly toolchain), as CI does: each target starts from its committed corpus and the crashes
# kept in fuzz/regressions/, with a fixed seed and a fixed number of executions (RUNS, default
# 20000; `config` 2500), so the same commit gives the same result every time: CI is no lottery. New inputs go
# to a scratch folder, not into the repository. A crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/; once fixed, keep it in fuzz/regressions/TARGET/ (the ordinary test
# suite replays that folder and the corpora: tests/fuzz_regressions.rs).
#
# Long runs (until coverage stops rising, new inputs kept in the corpus) are
# scripts/fuzz-plateau.py's, by hand; fuzz/PLATEAU.md has their figures.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20000}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cd fuzz
cargo +nightly fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# `config` parses whole configurations, about 25 a second under the sanitizers: replaying its
# corpus alone takes some 1,900 executions (70 s), so it gets 2,500 (100 s) rather than a
# run that the time cap would cut short (then no longer the same every time).
runs_of() {
    case "$1" in
        config) echo 2500 ;;
        *) echo "$RUNS" ;;
    esac
}
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target" "regressions/$target"
    runs=$(runs_of "$target")
    echo "fuzz: $target, $runs executions, seed 1"
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" "regressions/$target" -- \
        -seed=1 -runs="$runs" -max_total_time=300 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E "stat::number_of_executed_units|Done|SUMMARY|panicked|ERROR" || true
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "fuzz: $target crashed; input(s) in fuzz/artifacts/$target" >&2
        exit 1
    fi
done
