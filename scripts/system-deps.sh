#!/usr/bin/env bash
# Install the Debian packages named on the command line that are missing, so `make setup`, `make test`
# and `make starter` work on a fresh Debian machine that has only python3 and make.
#
#   scripts/system-deps.sh python3-venv            # before `python3 -m venv`
#   scripts/system-deps.sh espeak-ng flite chromium
#
# A package counts as present when what omniphi uses from it works: `$PYTHON -m ensurepip` can run
# for python3-venv, otherwise a program of the package's name is on PATH. Missing packages are
# installed with apt-get as root, otherwise through sudo; where neither is possible the script prints
# one line naming the command to run and exits 1 (never a silent skip).
set -euo pipefail

PYTHON=${PYTHON:-python3}

present() {
    case "$1" in
        python3-venv) "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing=()
for package in "$@"; do
    present "$package" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

install=(apt-get install -y -q --no-install-recommends "${missing[@]}")
if ! command -v apt-get >/dev/null 2>&1; then
    echo "omniphi needs the Debian packages ${missing[*]} and this machine has no apt-get: install them with its package manager" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "omniphi needs the Debian packages ${missing[*]}: run \`apt-get update && ${install[*]}\` as root (no sudo here)" >&2
    exit 1
fi
echo "system-deps: installing Debian packages ${missing[*]} (once, ~1-3 min)" >&2
"${as_root[@]}" apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "${install[@]}"
for package in "${missing[@]}"; do
    if ! present "$package"; then
        echo "omniphi: installing the Debian package $package did not provide it; install it by hand" >&2
        exit 1
    fi
done
