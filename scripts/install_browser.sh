#!/usr/bin/env bash
# The headless Chromium and its chromedriver that the leaderboard page's browser test drives
# (tests/test_leaderboard_page.py), from the distribution's packages. Run by `make setup`; does
# nothing where both are installed.
set -euo pipefail
if command -v chromium > /dev/null && command -v chromedriver > /dev/null; then
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "the leaderboard page in a browser" chromium chromium-driver
