"""`install_as_llama_cpp()`: `import llama_cpp` and its submodules give llamarcp's modules, lazily."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import llamarcp
from llamarcp.compat import LLAMA_CPP_MODULES, install_as_llama_cpp

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_llamarcp_loads_neither_the_layer_nor_the_library() -> None:
    out = run_python(
        "import sys, llamarcp\n"
        "print(sorted(m for m in sys.modules if m.startswith('llamarcp.compat') or m == 'llama_cpp'))\n"
        "llamarcp.install_as_llama_cpp()\n"
        "import llama_cpp, llama_cpp.llama_cpp\n"
        "print('llamarcp._generated._llama_ffi' in sys.modules, llama_cpp.__version__)\n"
        "print(llama_cpp.llama_cpp.LLAMA_POOLING_TYPE_MEAN)\n"
    )
    lines = out.splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "False 0.3.36"  # importing llama_cpp does not load libllama
    assert int(lines[2]) == 1  # first use of a llama.h name does


def test_every_submodule_is_the_llamarcp_module() -> None:
    install_as_llama_cpp()
    install_as_llama_cpp()  # idempotent
    import importlib

    for alias, target in LLAMA_CPP_MODULES.items():
        if alias.startswith("llama_cpp.server"):
            continue  # needs the server extra; covered below
        assert importlib.import_module(alias) is importlib.import_module(target)
    import llama_cpp
    import llama_cpp.llama_grammar

    assert llama_cpp.llama_grammar is sys.modules["llamarcp.compat.grammar"]
    assert llama_cpp.llama_grammar.__spec__.name == "llamarcp.compat.grammar"  # its own spec, not the alias's


def test_top_level_names() -> None:
    install_as_llama_cpp()
    import llama_cpp
    from llama_cpp import (
        Llama,
        LlamaDiskCache,
        LlamaGrammar,
        LlamaRAMCache,
        LlamaState,
        LlamaTokenizer,
        LogitsProcessorList,
        StoppingCriteriaList,
        llama_backend_init,
    )

    assert Llama is llamarcp.Llama
    assert LlamaGrammar is sys.modules["llamarcp.grammar"].LlamaGrammar
    assert LlamaState is sys.modules["llamarcp.state"].LlamaState
    assert LlamaRAMCache.__name__ == "LlamaRAMCache" and LlamaDiskCache.__name__ == "LlamaDiskCache"
    assert LogitsProcessorList()(None, 3) == 3 and StoppingCriteriaList()(None, None) is False
    assert LlamaTokenizer.__module__ == "llamarcp.compat.tokenizer"
    llama_backend_init()
    assert llama_cpp.llama_max_devices() >= 1  # llama.h functions at the top level, as `from .llama_cpp import *`
    assert llama_cpp.LLAMA_DEFAULT_SEED == llamarcp.lib.LLAMA_DEFAULT_SEED
    assert isinstance(llama_cpp.llama_print_system_info(), bytes)  # ctypes gives char* results as bytes
    assert llama_cpp.CreateCompletionResponse.__name__ == "CreateCompletionResponse"
    assert "llama_decode" in dir(llama_cpp) and "LlamaGrammar" in dir(llama_cpp)


def test_unknown_names_fail_clearly() -> None:
    install_as_llama_cpp()
    import llama_cpp
    import llama_cpp.llama_cpp as low

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        llama_cpp.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError, match="declares no 'llama_no_such_function'"):
        low.llama_no_such_function  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        import llama_cpp._no_such_module  # noqa: F401


def test_refuses_to_shadow_a_real_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    with pytest.raises(ImportError, match="already imported"):
        install_as_llama_cpp()


def test_server_maps_to_llamarcp_server() -> None:
    install_as_llama_cpp()  # the server extra is part of dev: importing llamarcp.server must work here
    import llama_cpp.server.app

    assert llama_cpp.server.app.create_app is sys.modules["llamarcp.server.app"].create_app


def test_llamarcp_names_for_the_same_modules() -> None:
    import llamarcp.llama_cache
    import llamarcp.llama_chat_format
    import llamarcp.llama_cpp
    import llamarcp.llama_grammar
    import llamarcp.llama_speculative
    import llamarcp.llama_tokenizer
    import llamarcp.llama_types

    assert llamarcp.llama_cache.LlamaRAMCache is sys.modules["llamarcp.compat.cache"].LlamaRAMCache
    assert llamarcp.llama_grammar.JSON_GBNF and llamarcp.llama_types.ChatCompletionTool
    assert llamarcp.llama_speculative.LlamaPromptLookupDecoding and llamarcp.llama_tokenizer.LlamaHFTokenizer
    assert llamarcp.llama_chat_format.register_chat_format
    assert llamarcp.llama_cpp.LLAMA_POOLING_TYPE_NONE == 0
