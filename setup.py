"""Packaging hook: compile the BPF objects with CMake as part of the Python build.

Everything declarative lives in pyproject.toml; this file only adds the CMake step.

* ``pip install .``      -> the objects are built into the wheel's ``ciliumlite/objects/``
                            (a temporary CMake build dir; the test programs are not built).
* ``pip install -e .``   -> the objects are built into the source tree's ``ciliumlite/objects/``
                            (and ``tests/bpf/objects/``), using ``build/`` like ``make build``.

The toolchain (clang, libbpf-dev, cmake) comes from ``sudo scripts/install-system-deps.sh``.
Set ``CILIUMLITE_SKIP_BPF_BUILD=1`` to install without building the objects (docs, linting).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.develop import develop as _develop

ROOT = Path(__file__).resolve().parent
SOURCE_OBJECTS = ROOT / "ciliumlite" / "objects"
SKIP_ENV = "CILIUMLITE_SKIP_BPF_BUILD"
HINT = (
    "Install the toolchain with `sudo scripts/install-system-deps.sh`, "
    f"or set {SKIP_ENV}=1 to install ciliumlite without its BPF objects."
)


class BpfBuildError(SystemExit):
    pass


def build_bpf_objects(output_dir: Path, build_dir: Path, *, test_progs: bool) -> None:
    """Configure and build the CMake project, writing the datapath objects to output_dir."""
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        print(f"ciliumlite: {SKIP_ENV} is set, not building the BPF objects")
        return
    if not (ROOT / "CMakeLists.txt").is_file():
        raise BpfBuildError(f"ciliumlite: {ROOT / 'CMakeLists.txt'} is missing; cannot build the BPF objects")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BpfBuildError(f"ciliumlite: cmake was not found, and it builds the BPF objects. {HINT}")
    configure = [
        cmake,
        "-S", str(ROOT),
        "-B", str(build_dir),
        f"-DBPF_OUTPUT_DIR={output_dir}",
        f"-DBUILD_TEST_PROGS={'ON' if test_progs else 'OFF'}",
    ]  # fmt: skip
    for cmd in (configure, [cmake, "--build", str(build_dir)]):
        print("ciliumlite:", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
            raise BpfBuildError(f"ciliumlite: building the BPF objects failed ({cmd[1]} ...). {HINT}")


def build_in_tree() -> None:
    """Objects next to the sources, as an editable install (and `make build`) uses them."""
    build_bpf_objects(SOURCE_OBJECTS, ROOT / "build", test_progs=True)


class build_py(_build_py):
    """build_py that also runs the CMake build of the BPF objects."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # PEP 660 editable install: the package is imported from the source tree.
            build_in_tree()
            return
        with tempfile.TemporaryDirectory(prefix="ciliumlite-cmake-") as tmp:
            build_bpf_objects(
                Path(self.build_lib).resolve() / "ciliumlite" / "objects", Path(tmp), test_progs=False
            )


class develop(_develop):
    """Legacy `setup.py develop` / `pip install -e` without PEP 660."""

    def run(self) -> None:
        build_in_tree()
        super().run()


setup(cmdclass={"build_py": build_py, "develop": develop})
