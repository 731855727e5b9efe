#!/usr/bin/env bash
# Lint the protobuf API with buf (config: buf.yaml at the repo root).
#
# buf is installed from npm (@bufbuild/buf, which ships the native binary) into
# .ci/.tools/buf, a git-ignored cache inside the repo, so nothing is installed globally.
# Override the version with BUF_VERSION=x.y.z.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
version="${BUF_VERSION:-1.75.0}"
tools="$here/.tools/buf"
buf="$tools/node_modules/.bin/buf"

if [[ ! -x "$buf" ]] || [[ "$("$buf" --version 2>/dev/null || true)" != "$version" ]]; then
  echo "installing @bufbuild/buf@$version into ${tools#"$root/"}" >&2
  mkdir -p "$tools"
  [[ -f "$tools/package.json" ]] || echo '{"name":"baton-ci-tools","private":true}' >"$tools/package.json"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
    --save-exact "@bufbuild/buf@$version" >&2
fi

cd "$root"
echo "buf $("$buf" --version): lint" >&2
"$buf" lint "$@"
echo "buf lint: OK" >&2
