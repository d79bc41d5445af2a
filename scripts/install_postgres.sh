#!/usr/bin/env bash
# The PostgreSQL server the tests start on loopback (`--storage postgresql://...` is what a team
# shares), from the distribution's packages. Run by `make setup`; does nothing where a server is
# installed. Without root or sudo it says so, and the tests that need the server skip, saying why.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; then
    exit 0
fi
if ! command -v apt-get > /dev/null; then
    echo "install_postgres: no apt-get here; install a PostgreSQL server to run the PostgreSQL tests" >&2
    exit 0
fi
run_as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
        run_as_root=(sudo -n)
    else
        echo "install_postgres: not root and no sudo; the PostgreSQL tests will skip" >&2
        exit 0
    fi
fi
"${run_as_root[@]}" apt-get update -qq
"${run_as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql > /dev/null
