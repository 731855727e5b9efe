"""The README's examples run as pasted, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import Cluster

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_as_pasted(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    env = dict(os.environ, BATON_ADDR=cluster.main.addr, BATON_NAMESPACE=namespace)
    for i, code in enumerate(blocks):
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
