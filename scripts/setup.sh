#!/usr/bin/env bash
# Fresh-machine setup: the system libraries Iris links (FFmpeg for video files; libclang for the
# FFmpeg bindings) from Debian/Ubuntu packages, then a release build of `iris`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-install.sh pkg-config libclang-dev libavformat-dev libavcodec-dev libavutil-dev libswscale-dev
if [ "${1:-}" != "--deps-only" ]; then
  cargo build --release
fi
