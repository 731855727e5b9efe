"""The README's examples run as pasted, against a real server: the main example against a
plaintext one, the TLS example (the blocks that read BATON_TOKEN) against one serving TLS
with a tokens file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import Cluster, SecureServers
from tls_helpers import Secured

HERE = Path(__file__).resolve()
READMES = [HERE.parents[1] / "README.md", HERE.parents[3] / "README.md"]

MAIN_OUTPUT = [
    "not allowed from done",
    "1 baton.transition reviewing",
    "2 progress ",
    "3 baton.transition done",
    "4 final done",
]
TLS_OUTPUT = ["holding deploy/prod", "not allowed in another-team"]


@pytest.mark.parametrize("readme", READMES, ids=["clients/python/README.md", "README.md"])
def test_readme_python_blocks_run_as_pasted_twice(
    cluster: Cluster, secure_servers: SecureServers, secured: Secured, namespace: str, tmp_path: Path, readme: Path
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, f"{readme} has no python example"
    plain_env = dict(os.environ, BATON_ADDR=cluster.main.addr, BATON_NAMESPACE=namespace)
    tls_env = dict(
        plain_env,
        BATON_ADDR=f"https://{secure_servers.tls.addr}",
        BATON_TOKEN=secured.tokens["writer"],
        BATON_CA_FILE=str(secured.certs["ca"]),
    )
    # Twice in a row: the second run must not trip over what the first left behind.
    for i, code in enumerate(blocks * 2):
        tls = "BATON_TOKEN" in code
        env: Dict[str, str] = tls_env if tls else plain_env
        expected: List[str] = TLS_OUTPUT if tls else MAIN_OUTPUT
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"README block {i} failed:\n{code}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stdout.splitlines() == expected, proc.stdout
