"""setuptools hooks (metadata lives in pyproject.toml): a wheel bundles the pinned libllama from build_lib.py.

- build_py: after the Python files, `build_lib.build_for_wheel` builds the pinned llama.cpp (or reuses its
  cache entry: same key as `python build_lib.py`) and copies the libraries + build stamp into llamarcp/_native/.
  Editable installs skip this: `ci/setup.sh` runs build_lib.py and the runtime finds the cache entry.
- bdist_wheel: the wheel holds native code, so it is tagged for this platform (py3-none-<platform>; the
  bindings use cffi's ABI mode, so one wheel serves every Python 3 on that platform).
- sdist: carries the pinned tree (`_pin.TREE_PATHS`, verified by tree hash) under vendor/llama.cpp, so a
  wheel builds from it offline.
- Your own llama.cpp: with LLAMARCP_LLAMA_CPP_SOURCE=DIR (or `--config-settings llama-cpp-source=DIR`, which
  build_backend.py turns into it) the wheel bundles DIR's library and bindings generated from DIR's headers
  (codegen/own_tree.py, libclang), and the build prints the scan of llamarcp's code against that tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import build_lib  # noqa: E402

NATIVE_DIR = "_native"


class BuildPyWithLibrary(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        native = Path(self.build_lib) / "llamarcp" / NATIVE_DIR
        own = os.environ.get(build_lib.SOURCE_ENV, "").strip()
        try:
            if not own:
                build_lib.build_for_wheel(native)
                return
            for line in build_lib.build_own_tree_for_wheel(native, Path(own)):
                print(line, file=sys.stderr)
        except build_lib.BuildError as exc:
            where = f" (log: {exc.log})" if exc.log else ""
            raise SystemExit(f"llamarcp: building libllama for the wheel failed: {exc}{where}") from exc


class NativeDistribution(Distribution):
    """Holds native libraries: installed to platlib and tagged for the platform, though it has no extension."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


class SdistWithSource(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        try:
            build_lib.carry_source(Path(base_dir) / "vendor" / "llama.cpp")
        except build_lib.BuildError as exc:
            raise SystemExit(f"llamarcp: adding the pinned llama.cpp source to the sdist failed: {exc}") from exc


setup(
    distclass=NativeDistribution,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel, "sdist": SdistWithSource},
)
