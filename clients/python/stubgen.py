"""Generate baton's Python protobuf stubs into ``baton_client/_gen``.

Used by ``setup.py`` at build time (``pip install``) and by ``gen.sh`` for a working
tree. The proto comes from ``$BATON_PROTO_DIR``, ``./proto`` (inside an sdist) or
``../../proto`` (the repository); ``service-config.json`` likewise from ``./`` or ``../``.
Only the message module is generated: the client builds its own method callables, so no
``_pb2_grpc`` module is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_FILE = "baton/v1/coordinator.proto"


def proto_root() -> Path:
    candidates = [os.environ.get("BATON_PROTO_DIR"), HERE / "proto", HERE.parent.parent / "proto"]
    for c in candidates:
        if c and (Path(c) / PROTO_FILE).is_file():
            return Path(c)
    raise SystemExit(
        f"baton-client build: {PROTO_FILE} not found in $BATON_PROTO_DIR, {HERE / 'proto'} "
        f"or {HERE.parent.parent / 'proto'}; build from the baton repository or an sdist"
    )


def service_config() -> Path:
    for c in (HERE / "service-config.json", HERE.parent / "service-config.json"):
        if c.is_file():
            return c
    raise SystemExit("baton-client build: service-config.json not found beside or above clients/python")


def generate(out_pkg: Path) -> None:
    """Write ``out_pkg`` (the ``_gen`` package) from the proto and the service config."""
    from grpc_tools import protoc  # build-time dependency
    import grpc_tools

    root = proto_root()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            PROTO_FILE,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"baton-client build: protoc failed on {root / PROTO_FILE}")
        src = Path(tmp) / "baton" / "v1"
        if out_pkg.exists():
            shutil.rmtree(out_pkg)
        out_pkg.mkdir(parents=True)
        for name in ("coordinator_pb2.py", "coordinator_pb2.pyi"):
            text = (src / name).read_text()
            # protoc imports siblings as `from baton.v1 import ...`; the module lives in
            # baton_client._gen instead. (The descriptor keeps its canonical file name.)
            text = re.sub(r"^from baton\.v1 import ", "from baton_client._gen import ", text, flags=re.M)
            # The .pyi is protoc's, not ours to keep strict: mypy reads it for the types
            # of the messages and reports nothing inside it.
            header = "# mypy: ignore-errors\n" if name.endswith(".pyi") else ""
            (out_pkg / name).write_text(header + text)
    (out_pkg / "__init__.py").write_text('"""Generated from proto/baton/v1/coordinator.proto at build time."""\n')
    shutil.copyfile(service_config(), out_pkg / "service-config.json")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "baton_client" / "_gen"
    generate(target)
    print(f"stubgen: generated {target}", file=sys.stderr)
