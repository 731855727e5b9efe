#!/usr/bin/env bash
# The Python part of ../run-tests.sh (fresh venv, install, pytest on both backends).
# Extra arguments go to pytest.
exec "$(dirname "${BASH_SOURCE[0]}")/../run-tests.sh" python "$@"
