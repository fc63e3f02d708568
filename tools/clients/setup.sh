#!/usr/bin/env bash
# Installs what the client tests drive against a live `iris serve`: Debian's Chromium (the web
# page end to end), curl, a Python venv with the official `openai` package, and playwright-core
# from npm (no browser download: it drives /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")"
pkgs=(chromium curl)
# node/npm may come from elsewhere than Debian
command -v node >/dev/null && command -v npm >/dev/null || pkgs+=(nodejs npm)
../../scripts/apt-install.sh "${pkgs[@]}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import openai, httpx" 2>/dev/null || .venv/bin/pip install -q openai "httpx>=0.27"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
