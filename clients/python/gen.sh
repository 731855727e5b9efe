#!/usr/bin/env bash
# Generate the stubs into baton_client/_gen (git-ignored) for working on the package in
# place, e.g. with PYTHONPATH=clients/python. `pip install ./clients/python` does this by
# itself at build time; nothing generated is ever committed. Needs grpcio-tools in $PYTHON.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/stubgen.py" "$here/baton_client/_gen"
