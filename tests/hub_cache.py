"""A Hugging Face hub cache laid out on disk, for `from_pretrained` tests that must not reach the network."""

from __future__ import annotations

import shutil
from pathlib import Path


def fake_hub_cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """The layout huggingface_hub keeps: models--owner--name/{refs/main, snapshots/<commit>/<files>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    for name, source in files.items():
        target = base / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
