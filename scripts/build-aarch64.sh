#!/usr/bin/env bash
# Cross-builds sluice for aarch64 (64-bit Arm) with Debian's cross gcc and checks that the
# binary is an aarch64 ELF. `--release` builds the optimized binary users ship (in
# target/aarch64-unknown-linux-gnu/release/sluice); CI builds the debug one (faster; the
# same code and the same C dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
[ "${1:-}" = "--release" ] && profile=release
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    if ! rustup target add aarch64-unknown-linux-gnu; then
        # Only the download can fail here; a compile error below always fails the build.
        echo "WARNING: cannot fetch Rust's aarch64 standard library (no network to static.rust-lang.org?); aarch64 build skipped" >&2
        exit 0
    fi
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
flags=(--locked --target aarch64-unknown-linux-gnu --bin sluice)
[ "$profile" = release ] && flags+=(--release)
cargo build "${flags[@]}"
bin=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/$profile/sluice
# ELF e_machine (bytes 18-19, little endian) is 0xB7 for AArch64.
machine=$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' \n')
if [ "$machine" != "b700" ]; then
    echo "$bin is not an aarch64 binary (e_machine $machine)" >&2
    exit 1
fi
echo "aarch64 build ok: $bin ($(du -h "$bin" | cut -f1))"
