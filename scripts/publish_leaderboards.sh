#!/usr/bin/env bash
# Regenerates the published leaderboards in leaderboard/: runs every small-scale reproduction
# suite (the ones the README reports) into runs/ here, and each run writes its
# leaderboard/<suite>.{md,csv,json,html}. A finished suite is not trained again: its trials are
# in runs/, and only its leaderboard is rewritten. Takes about an hour on 2 idle cores.
#
#     bash scripts/publish_leaderboards.sh [SUITE ...]   # default: all of them
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${HARNESS:-.venv/bin/harness}
# Each suite with the options it is run with (the README says the same).
declare -A options=([hela_small]="--workers 2 --threads 1")
suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
    suites=(quickstart spiral_ubn digits_balanced digits_bayes digits_bayes_fixed_lr digits_unified_ablation
            depth_ubn_small hela_small)
fi
for suite in "${suites[@]}"; do
    echo "== $suite"
    # shellcheck disable=SC2086  # the options are words
    "$harness" run "suites/$suite.toml" --quiet ${options[$suite]:-}
done
