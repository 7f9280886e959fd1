"""llama-cpp-python compatibility: its names and semantics mapped onto llamarcp, in this one package.

`llamarcp.install_as_llama_cpp()` registers `llama_cpp` (and, on first import, each of its submodules) in
`sys.modules`, so code and libraries written for llama-cpp-python (LangChain, LlamaIndex, ...) run on
llamarcp unchanged. PyMySQL's `install_as_MySQLdb()` is the precedent.

| llama-cpp-python            | here                                     |
|-----------------------------|------------------------------------------|
| `llama_cpp`                 | `llamarcp.compat.package`                |
| `llama_cpp.llama`           | `llamarcp.compat.llama_module`           |
| `llama_cpp.llama_cpp`       | `llamarcp.compat.lowlevel` (ctypes face) |
| `llama_cpp._internals`      | `llamarcp.compat.internals` (on the ctypes face) |
| `llama_cpp.llama_types`     | `llamarcp.compat.types`                  |
| `llama_cpp.llama_grammar`   | `llamarcp.compat.grammar`                |
| `llama_cpp.llama_cache`     | `llamarcp.compat.cache`                  |
| `llama_cpp.llama_speculative` | `llamarcp.compat.speculative`          |
| `llama_cpp.llama_tokenizer` | `llamarcp.compat.tokenizer`              |
| `llama_cpp.llama_chat_format` | `llamarcp.compat.chat_format`          |
| `llama_cpp.mtmd_cpp`        | `llamarcp.compat.mtmd_module` (ctypes face) |
| `llama_cpp.server[.app]`    | `llamarcp.server[.app]` (`create_app` also takes llama-cpp-python's settings) |
| `llama_cpp.server.settings` | `llamarcp.server.compat_settings` (its ModelSettings, ServerSettings, ...) |
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["LLAMA_CPP_MODULES", "install_as_llama_cpp"]

#: llama-cpp-python module name -> the llamarcp module that provides it.
LLAMA_CPP_MODULES: dict[str, str] = {
    "llama_cpp": "llamarcp.compat.package",
    "llama_cpp.llama": "llamarcp.compat.llama_module",
    "llama_cpp.llama_cpp": "llamarcp.compat.lowlevel",
    "llama_cpp._internals": "llamarcp.compat.internals",
    "llama_cpp.llama_types": "llamarcp.compat.types",
    "llama_cpp.llama_grammar": "llamarcp.compat.grammar",
    "llama_cpp.llama_cache": "llamarcp.compat.cache",
    "llama_cpp.llama_speculative": "llamarcp.compat.speculative",
    "llama_cpp.llama_tokenizer": "llamarcp.compat.tokenizer",
    "llama_cpp.llama_chat_format": "llamarcp.compat.chat_format",
    "llama_cpp.mtmd_cpp": "llamarcp.compat.mtmd_module",
    "llama_cpp.server": "llamarcp.server",
    "llama_cpp.server.app": "llamarcp.server.app",
    "llama_cpp.server.settings": "llamarcp.server.compat_settings",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The target ran when it was imported; importlib has just given it the alias's spec: put its own back
        # (its __name__, __file__ and __package__ were left alone), so reload() and tools see the real module.
        module.__spec__ = self._own_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves `llama_cpp.*` to the llamarcp modules above, importing each only when it is first imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        module = LLAMA_CPP_MODULES.get(fullname)
        if module is None:
            return None
        is_package = fullname == "llama_cpp" or fullname == "llama_cpp.server"
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=is_package)


_FINDER = _AliasFinder()


def install_as_llama_cpp() -> None:
    """Make `import llama_cpp` (and `llama_cpp.llama`, `llama_cpp.llama_cpp`, ...) give llamarcp's modules.

    Idempotent. Refuses to shadow a real llama-cpp-python that is already imported.
    """
    loaded = sys.modules.get("llama_cpp")
    if loaded is not None and not getattr(loaded, "__llamarcp__", False):
        raise ImportError(
            "llama_cpp (llama-cpp-python) is already imported; call llamarcp.install_as_llama_cpp() before it is"
        )
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    package = importlib.import_module("llamarcp.compat.package")
    sys.modules["llama_cpp"] = package
