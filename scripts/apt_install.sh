#!/usr/bin/env bash
# Installs Debian packages for the set-up's optional parts, where it can: with apt-get, as root
# or through passwordless sudo. Elsewhere it says what is left out and succeeds, and the tests
# that need the packages skip, saying why.
#
#     bash scripts/apt_install.sh "WHAT THEY ARE FOR" PACKAGE...
set -euo pipefail
purpose=$1
shift
if ! command -v apt-get > /dev/null; then
    echo "set-up: no apt-get here; install $* yourself for $purpose" >&2
    exit 0
fi
run_as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
        run_as_root=(sudo -n)
    else
        echo "set-up: not root and no sudo, so $* are not installed; the tests of $purpose will skip" >&2
        exit 0
    fi
fi
"${run_as_root[@]}" apt-get update -qq
"${run_as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
