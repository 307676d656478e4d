"""Build hook: generate the gRPC stubs from protos/ at build and install time.

The stubs land in recsvc/v1/ and are never committed (see .gitignore).
"""

from __future__ import annotations

import pathlib

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = pathlib.Path(__file__).resolve().parent


def generate_stubs() -> None:
    from grpc_tools import protoc  # build-time requirement (pyproject build-system)

    protos = sorted((ROOT / "protos").rglob("*.proto"))
    if not protos:
        return
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))


class BuildStubs(Command):
    description = "generate gRPC stubs from protos/"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_stubs()


class BuildPy(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


class Develop(develop):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPy, "develop": Develop, "build_stubs": BuildStubs})
