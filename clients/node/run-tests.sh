#!/usr/bin/env bash
# Node.js check of the baton API (S4 late events, S5 double trigger) against a real
# `baton serve` started by the script.
#
#   BATON_BIN       server binary (default: <repo>/target/debug/baton)
#   BATON_MACHINES  machines file (default: <repo>/examples/machines.toml, falling back to
#                   ../testdata/machines.toml while that file does not exist)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
exec node s4_s5.mjs "$@"
