"""The build hook: the gRPC stubs of protos/ are compiled while the package builds.

`pip install .` (and every wheel) gets them under promptclimb/<package>/v1/, with
type stubs for the messages (protoc's .pyi) and the services (mypy-protobuf's);
`pip install -e .` writes them in place, beside promptclimb/client.py (git
ignores them), as setuptools asks of editable builds. They are never edited by
hand and never committed. Everything else about the package is pyproject.toml.
The images (deploy/docker) call `compile_protos` too, so stubs have one recipe.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def compile_protos(out: Path, *, typed_services: bool = False) -> list[Path]:
    """Compiles every .proto under protos/ into `out` (stale stubs removed first); returns the files written.

    `typed_services` adds mypy-protobuf's stubs of the service modules (a [build-system] requirement): the
    package's users and mypy need them, the images (which call this without it) do not.
    """
    import grpc_tools
    from grpc_tools import protoc

    for pattern in GENERATED:
        for stale in (out / "promptclimb").rglob(pattern):
            stale.unlink()
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTOS}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto (Timestamp, Duration, ...)
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if typed_services:
        plugin = shutil.which("protoc-gen-mypy_grpc") or shutil.which(
            "protoc-gen-mypy_grpc", path=Path(sys.executable).parent
        )
        if plugin is None:
            raise RuntimeError("protoc-gen-mypy_grpc not found: install mypy-protobuf (pyproject's [build-system])")
        args[1:1] = [f"--plugin=protoc-gen-mypy_grpc={plugin}", f"--mypy_grpc_out={out}"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(protos)}")
    return sorted(path for pattern in GENERATED for path in (out / "promptclimb").rglob(pattern))


class BuildPyWithStubs(build_py):
    """build_py that also writes the stubs: into the build directory, or in place for an editable install."""

    def run(self) -> None:
        super().run()
        self._stubs = compile_protos(ROOT if self.editable_mode else Path(self.build_lib), typed_services=True)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *map(str, getattr(self, "_stubs", []))]


if __name__ == "__main__":  # as the build backend runs it; the Dockerfiles import compile_protos
    setup(cmdclass={"build_py": BuildPyWithStubs})
