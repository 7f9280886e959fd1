"""The PEP 517 backend: setuptools' (setup.py does the work), plus a setting for building your own llama.cpp.

    pip install . --config-settings llama-cpp-source=/path/to/llama.cpp
    LLAMARCP_LLAMA_CPP_SOURCE=/path/to/llama.cpp pip install .      # the same

With either, the wheel bundles that tree's libllama and bindings generated from its headers (setup.py,
codegen/own_tree.py), which needs libclang and jinja2 at build time: they are added to the build requirements
on this path only, so the default install of the pin stays libclang-free.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import build_sdist, get_requires_for_build_sdist, prepare_metadata_for_build_wheel

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_wheel",
]

SOURCE_ENV = "LLAMARCP_LLAMA_CPP_SOURCE"  # the same name as build_lib.SOURCE_ENV (not imported: no side effects)
SETTINGS = ("llama-cpp-source", "llama_cpp_source")
#: What generating bindings from a tree needs (codegen/parse.py, codegen/render.py).
CODEGEN_REQUIRES = ["libclang>=16", "jinja2>=3"]


def _apply(config_settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """Move our setting into the environment setup.py reads; pass the rest to setuptools."""
    if not config_settings:
        return config_settings
    rest = dict(config_settings)
    for key in SETTINGS:
        value = rest.pop(key, None)
        if value:
            os.environ[SOURCE_ENV] = str(value)
    return rest or None


def _own_tree() -> bool:
    return bool(os.environ.get(SOURCE_ENV, "").strip())


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    rest = _apply(config_settings)
    return list(_setuptools.get_requires_for_build_wheel(rest)) + (CODEGEN_REQUIRES if _own_tree() else [])


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return list(_setuptools.get_requires_for_build_editable(_apply(config_settings)))


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    return str(_setuptools.build_wheel(wheel_directory, _apply(config_settings), metadata_directory))


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    return str(_setuptools.build_editable(wheel_directory, _apply(config_settings), metadata_directory))
