#!/usr/bin/env bash
# Remakes the README's screenshots from the browser tests (a real chromium against a real server, SQLite).
set -euo pipefail
cd "$(dirname "$0")/../.."
ECRF_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_web_browser.py \
  -k "sqlite and (eligible or query_sdv or logged_edited or endpoints_status)"
ls -l docs/screenshots/*.png
