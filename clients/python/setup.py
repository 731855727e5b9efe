"""Build hook: generate the protobuf stubs from ../../proto while building.

Everything else is declared in pyproject.toml.
"""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stubgen  # noqa: E402


class BuildPyWithStubs(build_py):
    """build_py that also writes baton_client/_gen into the build directory."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            stubgen.generate(Path(stubgen.HERE) / "baton_client" / "_gen")
        else:
            stubgen.generate(Path(self.build_lib) / "baton_client" / "_gen")


class SdistWithProto(sdist):
    """An sdist carries the proto and service config, so it builds away from the repo."""

    def make_release_tree(self, base_dir: str, files: list) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(stubgen.proto_root() / "baton", Path(base_dir) / "proto" / "baton")
        shutil.copyfile(stubgen.service_config(), Path(base_dir) / "service-config.json")


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto})
