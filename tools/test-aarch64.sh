#!/usr/bin/env bash
# Builds iris-nn's tests for aarch64 and runs them under qemu-user (`-cpu max`: NEON with the
# dot product, so the `Neon` quantized kernels run against their scalar twin). For x86 machines
# without an Arm one at hand; qemu says nothing about speed. Installs Debian's cross linker and
# qemu-user when missing. Extra arguments go to the test binary (e.g. a test name filter).
#   tools/test-aarch64.sh [filter]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-install.sh qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"
cargo test --release -p iris-nn --target aarch64-unknown-linux-gnu --lib -- "$@"
