#!/usr/bin/env bash
# Fresh-machine setup: the system libraries Iris links (FFmpeg for video files; libclang for the
# FFmpeg bindings) from Debian/Ubuntu packages, then a release build of `iris`.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(pkg-config libclang-dev libavformat-dev libavcodec-dev libavutil-dev libswscale-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
if [ "${1:-}" != "--deps-only" ]; then
  cargo build --release
fi
