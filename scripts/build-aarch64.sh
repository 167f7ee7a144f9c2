#!/usr/bin/env bash
# Cross-builds sluice for aarch64 (64-bit Arm) with Debian's cross gcc: the release binary
# lands in target/aarch64-unknown-linux-gnu/release/sluice.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
cargo build --release --locked --target aarch64-unknown-linux-gnu
file target/aarch64-unknown-linux-gnu/release/sluice 2>/dev/null || ls -l target/aarch64-unknown-linux-gnu/release/sluice
