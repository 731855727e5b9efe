#!/usr/bin/env bash
# Generate the Python gRPC stubs for baton from ../../proto into baton_client/_gen/
# (git-ignored; the stubs are never committed). Needs grpcio-tools in $PYTHON
# (default: python3), e.g. `pip install -e '.[build]'` first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
out="$here/baton_client/_gen"
python="${PYTHON:-python3}"

tmp="$(mktemp -d "$here/baton_client/.gen.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

mapfile -t protos < <(cd "$proto_root" && find . -name '*.proto' | sed 's|^\./||' | sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "gen.sh: no .proto files under $proto_root" >&2
  exit 1
fi

"$python" -m grpc_tools.protoc \
  -I"$proto_root" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  "${protos[@]}"

# protoc emits absolute imports rooted at the proto package (`from baton.v1 import ...`).
# The stubs live inside baton_client._gen, so rewrite those imports and make every
# directory a package. Descriptor file names stay canonical (baton/v1/coordinator.proto).
"$python" - "$tmp" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
pattern = re.compile(r"^from baton((?:\.[A-Za-z0-9_]+)*) import ", re.M)
for path in root.rglob("*.py"):
    text = path.read_text()
    path.write_text(pattern.sub(r"from baton_client._gen.baton\1 import ", text))
for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
    (d / "__init__.py").touch()
PY

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "gen.sh: generated $(cd "$out" && find . -name '*_pb2*.py' | wc -l) modules into ${out#"$here/"}" >&2
