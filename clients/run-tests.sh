#!/usr/bin/env bash
# Every client test, for both packages and both backends:
#
#   1. Python: a fresh venv in clients/.work/venv, `pip install ./clients/python[test]`
#      (the build generates the stubs from proto/), then pytest -- sync and asyncio
#      clients against real `baton serve` processes on SQLite and on Postgres.
#   2. TypeScript: `npm ci` + `npm pack` in clients/node, the tarball installed into a
#      fresh project in clients/.work/node-project, then node's test runner there, on
#      SQLite and on Postgres. Its last line is "N passed, M failed".
#
# Usage: clients/run-tests.sh [python|node] [extra pytest arguments...]
#
#   BATON_BIN          server binary (default <repo>/target/debug/baton)
#   BATON_MACHINES     machines file (default <repo>/examples/machines.toml)
#   BATON_TEST_PG_URL  Postgres admin URL allowed to CREATE DATABASE
#                      (default postgres://postgres@127.0.0.1:5432/test); each run makes
#                      its own databases and drops them
#   PYTHON             interpreter for the venv (default python3)
#
# Needs only python3 (with venv) and node/npm. Exits non-zero when anything fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
work="$here/.work"
mkdir -p "$work"

parts=(python node)
if [[ $# -gt 0 && ( $1 == python || $1 == node ) ]]; then
  parts=("$1")
  shift
fi

export BATON_BIN="${BATON_BIN:-$repo/target/debug/baton}"
BATON_BIN="$(cd "$(dirname "$BATON_BIN")" && pwd)/$(basename "$BATON_BIN")"
if [[ -z ${BATON_MACHINES:-} ]]; then
  BATON_MACHINES="$repo/examples/machines.toml"
  [[ -f $BATON_MACHINES ]] || BATON_MACHINES="$here/testdata/machines.toml"
fi
export BATON_MACHINES
if [[ ! -x $BATON_BIN ]]; then
  echo "run-tests: baton binary not found at $BATON_BIN (cargo build, or set BATON_BIN)" >&2
  exit 1
fi
echo "run-tests: baton $BATON_BIN, machines $BATON_MACHINES"

status=0

run_python() {
  local venv="$work/venv"
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here/python[test]"
  # pip builds in the source tree; leave it as it was.
  rm -rf "$here/python/build" "$here/python/baton_client.egg-info"
  # Run from outside the source tree, so that the installed package is the one tested.
  (cd "$work" && "$venv/bin/python" -m pytest -c "$here/python/pyproject.toml" --rootdir "$here/python" \
    "$here/python/tests" "$@") || status=1
}

run_node() {
  local project="$work/node-project"
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
  rm -f "$work"/baton-client-*.tgz
  local tarball
  tarball="$(cd "$here/node" && npm pack --silent --pack-destination "$work" | tail -n 1)"
  rm -rf "$project"
  mkdir -p "$project"
  cp "$here/node/test/"*.mjs "$project/"
  cat >"$project/package.json" <<'JSON'
{ "name": "baton-client-tests", "private": true, "type": "module" }
JSON
  (cd "$project" && npm install --no-audit --no-fund --loglevel=error "$work/$tarball" pg@^8.13 node-forge@^1.3)
  (cd "$project" && BATON_REPO="$repo" BATON_TSC="$here/node/node_modules/typescript/bin/tsc" \
    node --test --test-concurrency=1 --test-reporter=./reporter.mjs offline.test.mjs server.test.mjs) || status=1
}

for part in "${parts[@]}"; do
  echo "run-tests: == $part =="
  "run_$part" "$@"
done
exit "$status"
