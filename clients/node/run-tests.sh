#!/usr/bin/env bash
# The TypeScript part of ../run-tests.sh (npm pack, install into a fresh project, tests on
# both backends).
exec "$(dirname "${BASH_SOURCE[0]}")/../run-tests.sh" node
