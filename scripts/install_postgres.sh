#!/usr/bin/env bash
# The PostgreSQL server the tests start on loopback (`--storage postgresql://...` is what a team
# shares), from the distribution's packages. Run by `make setup`; does nothing where a server is
# installed.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; then
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "PostgreSQL storage" postgresql
