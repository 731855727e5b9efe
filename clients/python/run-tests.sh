#!/usr/bin/env bash
# Run the Python client test suite against a real `baton serve`.
#
#   BATON_BIN       server binary (default: <repo>/target/debug/baton)
#   BATON_MACHINES  machines file (default: <repo>/examples/machines.toml, falling back to
#                   ../testdata/machines.toml while that file does not exist)
#   PYTHON          interpreter used to create the venv (default: python3)
#
# Extra arguments go to pytest, e.g. ./run-tests.sh -k s1 -x
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="$here/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
PYTHON="$venv/bin/python" "$here/gen.sh"
exec "$venv/bin/python" -m pytest "$@"
