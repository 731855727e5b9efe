"""The README's examples run as pasted, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Cluster

HERE = Path(__file__).resolve()
READMES = [HERE.parents[1] / "README.md", HERE.parents[3] / "README.md"]


@pytest.mark.parametrize("readme", READMES, ids=["clients/python/README.md", "README.md"])
def test_readme_python_blocks_run_as_pasted_twice(cluster: Cluster, namespace: str, tmp_path: Path, readme: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, f"{readme} has no python example"
    env = dict(os.environ, BATON_ADDR=cluster.main.addr, BATON_NAMESPACE=namespace)
    # Twice in a row: the second run must not trip over what the first left behind.
    for i, code in enumerate(blocks * 2):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"README block {i} failed:\n{code}\n{proc.stdout}\n{proc.stderr}"
        lines = proc.stdout.splitlines()
        assert lines[0] == "not allowed from done"
        assert lines[1:] == [
            "1 baton.transition reviewing",
            "2 progress ",
            "3 baton.transition done",
            "4 final done",
        ], proc.stdout
