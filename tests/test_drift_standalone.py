"""The drift CLI of a package-only copy of `llamarcp/` (no checkout, no site-packages): manifests work, headers
get the message that they need a checkout. The wheel itself is tested by tests/test_wheel.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def package_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tmp>/site/llamarcp`: the package and nothing else of the checkout."""
    site = tmp_path_factory.mktemp("standalone") / "site"
    shutil.copytree(ROOT / "llamarcp", site / "llamarcp", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def run_isolated(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python without site-packages (-S) and without the checkout on sys.path: only the copy and the stdlib."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), PYTHONSAFEPATH="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=site.parent, env=env, capture_output=True, text=True, timeout=120
    )


def test_copy_has_no_checkout_on_its_path(package_only: Path) -> None:
    code = "import llamarcp.drift.__main__, importlib.util, sys; print(llamarcp.__file__); "
    code += "print(importlib.util.find_spec('codegen'), importlib.util.find_spec('build_lib'))"
    proc = run_isolated(package_only, "-c", code)
    assert proc.returncode == 0, proc.stderr
    where, specs = proc.stdout.splitlines()
    assert where == str(package_only / "llamarcp" / "__init__.py")
    assert specs == "None None"


def test_manifest_diff_runs_from_the_package_alone(package_only: Path, tmp_path: Path) -> None:
    pinned = json.loads((ROOT / "llamarcp" / "_generated" / "api.json").read_text())
    older = dict(pinned, functions=[f for f in pinned["functions"] if f["name"] != "llama_backend_free"])
    old = tmp_path / "old.json"
    old.write_text(json.dumps(older))
    out = tmp_path / "diff.json"
    proc = run_isolated(package_only, "-m", "llamarcp.drift", "diff", str(old), "pinned", "--json", "-o", str(out))
    assert proc.returncode == 0, proc.stderr  # an added function breaks nothing
    report = json.loads(out.read_text())
    assert [c["name"] for c in report["added"]] == ["llama_backend_free"] and not report["removed"]
    assert proc.stdout.startswith("0 removed, 1 added")


@pytest.mark.parametrize("spec", ["include/llama.h", "llama.cpp-tree", "carrier:0.3.16"])
def test_header_inputs_say_they_need_a_checkout(package_only: Path, tmp_path: Path, spec: str) -> None:
    if spec.endswith(".h"):
        (tmp_path / "include").mkdir()
        (tmp_path / "include" / "llama.h").write_text("int llama_f(void);\n")
        spec = str(tmp_path / "include" / "llama.h")
    elif spec == "llama.cpp-tree":
        (tmp_path / "include").mkdir()
        (tmp_path / "include" / "llama.h").write_text("int llama_f(void);\n")
        spec = str(tmp_path)
    proc = run_isolated(package_only, "-m", "llamarcp.drift", "diff", spec, "pinned")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"error: {spec}: parsing headers and llama.cpp trees needs a llamarcp checkout"), err
    assert "run `python -m codegen.drift ...` with the same arguments there" in err
    assert "Traceback" not in proc.stderr and "No module named" not in proc.stderr


def test_package_sources_do_not_reach_into_the_checkout() -> None:
    """No module of the package edits sys.path or imports the checkout-only codegen/ or build_lib.py."""
    offenders = []
    for path in sorted((ROOT / "llamarcp").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in ("sys.path", "import codegen", "from codegen", "import build_lib"):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders
