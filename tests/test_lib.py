"""llamarcp._lib: lookup order and the error that names every place looked at."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llamarcp import _cache, _lib, _locate
from llamarcp.errors import LibraryNotFoundError


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No env override, no bundled library and an empty build cache: only the system loader is left."""
    for var in _lib.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("LLAMARCP_CACHE_DIR", str(cache))
    monkeypatch.setattr(_locate, "BUNDLED_DIR", tmp_path / "no-bundle")
    monkeypatch.setattr(_locate, "system_find_library", lambda name: None)
    return cache


def fake_lib_dir(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "libllama.so").write_bytes(b"\x7fELF fake")
    return directory


def touch_lib_in_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`import llamarcp` then `llamarcp.lib` in a fresh interpreter; prints the LibraryNotFoundError it gets."""
    code = (
        "import llamarcp\n"
        "from llamarcp.errors import LibraryNotFoundError\n"
        "try:\n"
        "    llamarcp.lib\n"
        "except LibraryNotFoundError as exc:\n"
        "    print('CAUGHT', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_missing_library_names_every_place_and_the_fix(clean_env: Path) -> None:
    with pytest.raises(LibraryNotFoundError) as info:
        _lib.find_library()
    message = str(info.value)
    assert str(_cache.pinned_default_lib_dir()) in message
    assert str(clean_env) in message
    assert "system loader" in message
    assert "python build_lib.py" in message


def test_env_var_order(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = fake_lib_dir(tmp_path, "ours")
    theirs = fake_lib_dir(tmp_path, "theirs")
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(theirs))
    assert _lib.find_library() == theirs / "libllama.so"
    monkeypatch.setenv("LLAMARCP_LIB_PATH", str(ours / "libllama.so"))
    assert _lib.find_library() == ours / "libllama.so"


def test_env_var_beats_build_cache(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _cache.pinned_default_lib_dir()
    cached.mkdir(parents=True)
    (cached / "libllama.so").write_bytes(b"\x7fELF fake")
    (cached / _cache.STAMP_NAME).write_text("{}")
    assert _lib.find_library() == cached / "libllama.so"
    explicit = fake_lib_dir(tmp_path, "explicit")
    monkeypatch.setenv("LLAMARCP_LIB_PATH", str(explicit))
    assert _lib.find_library() == explicit / "libllama.so"


def stamped_lib_dir(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "libllama.so").write_bytes(b"\x7fELF fake")
    (directory / _cache.STAMP_NAME).write_text("{}")
    return directory


def test_bundled_library_comes_after_the_env_vars_and_before_the_cache(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = stamped_lib_dir(_cache.pinned_default_lib_dir())
    assert _lib.find_library() == cached / "libllama.so"
    bundled = stamped_lib_dir(tmp_path / "site-packages" / "llamarcp" / "_native")
    monkeypatch.setattr(_locate, "BUNDLED_DIR", bundled)
    assert _lib.find_library() == bundled / "libllama.so"
    wheres = [where for where, _ in _lib.candidates()]
    assert wheres.index(f"bundled with the package {bundled}") < wheres.index(f"build cache {cached}")
    theirs = fake_lib_dir(tmp_path, "theirs")
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(theirs))
    assert _lib.find_library() == theirs / "libllama.so"


def test_bundled_dir_without_stamp_is_ignored_and_named_when_nothing_is_found(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = fake_lib_dir(tmp_path, "_native")  # a library but no stamp: not what a wheel build leaves
    monkeypatch.setattr(_locate, "BUNDLED_DIR", bundled)
    with pytest.raises(LibraryNotFoundError) as info:
        _lib.find_library()
    assert f"bundled with the package {bundled}" in str(info.value)
    assert "pip install ." in str(info.value)


def test_the_package_looks_for_its_bundle_next_to_itself() -> None:
    assert Path(_lib.__file__).resolve().parent / "_native" == _lib.BUNDLED_DIR


def test_unstamped_cache_entry_is_ignored(clean_env: Path) -> None:
    """A build that died half-way leaves no stamp; it must never be loaded."""
    cached = _cache.pinned_default_lib_dir()
    cached.mkdir(parents=True)
    (cached / "libllama.so").write_bytes(b"\x7fELF half-built")
    with pytest.raises(LibraryNotFoundError, match="libllama not found"):
        _lib.find_library()


def test_system_loader_is_last(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_locate, "system_find_library", lambda name: "libllama.so.0")
    assert _lib.find_library() == "libllama.so.0"


def test_env_var_pointing_nowhere_is_an_error_not_a_fallthrough(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_locate, "system_find_library", lambda name: "libllama.so.0")
    monkeypatch.setenv("LLAMARCP_LIB_PATH", str(tmp_path / "nope"))
    with pytest.raises(LibraryNotFoundError, match=r"\$LLAMARCP_LIB_PATH=.*nope"):
        _lib.find_library()


def test_import_survives_without_library_and_lib_access_fails_clearly(tmp_path: Path) -> None:
    env = {"LLAMARCP_CACHE_DIR": str(tmp_path), "LLAMARCP_LIB_PATH": str(tmp_path / "missing"), "PATH": ""}
    proc = touch_lib_in_child(env)
    assert "CAUGHT" in proc.stdout
    assert "LLAMARCP_LIB_PATH" in proc.stdout


def test_a_file_that_is_not_a_library_fails_with_the_path(tmp_path: Path) -> None:
    """Found but not loadable: LibraryLoadError (its own error, an OSError) with the loader's reason."""
    bogus = fake_lib_dir(tmp_path, "bogus")
    env = {"LLAMARCP_CACHE_DIR": str(tmp_path), "LLAMARCP_LIB_PATH": str(bogus), "PATH": ""}
    code = (
        "import llamarcp\n"
        "from llamarcp.errors import LibraryLoadError\n"
        "try:\n"
        "    llamarcp.lib\n"
        "except LibraryLoadError as exc:\n"
        "    print('CAUGHT', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"CAUGHT libllama was found at {bogus / 'libllama.so'} but the system loader could not load it" in proc.stdout
    )
