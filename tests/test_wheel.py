"""The wheel a user gets from `pip install`: built from the sdist, installed into a fresh venv outside the checkout.

One module-scoped build: sdist (carrying the pinned llama.cpp tree) -> wheel (offline, no build isolation; the
library comes from build_lib's cache, so nothing is compiled when ci/setup.sh already built it) -> a fresh
venv that sees the dependencies of this test environment through a .pth file but not the checkout. Every child
runs outside the checkout, without LLAMARCP_LIB_PATH/LLAMA_CPP_LIB_PATH and with an empty cache dir, so only
the bundled library can be loaded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from procs import run, spawned

from llamarcp import _cache, _pin

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: Hang guards for the children (the wheel build is a cache hit), not time budgets.
BUILD_TIMEOUT = 1800
CHILD_TIMEOUT = 300


@dataclass(frozen=True)
class Installed:
    sdist: Path
    wheel: Path
    wheel_log: str
    python: Path
    site: Path
    env: dict[str, str]
    cwd: Path


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return build_and_install(tmp_path_factory.mktemp("wheel"))


def build_and_install(work: Path, build_env: dict[str, str] | None = None, settings: tuple[str, ...] = ()) -> Installed:
    """sdist -> wheel (with `build_env` added to the build's environment and pip `settings`) -> a fresh venv."""
    dist = work / "dist"
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    sdist_proc = run([sys.executable, "-c", code, dist], cwd=ROOT, timeout=BUILD_TIMEOUT)
    _ok(sdist_proc)
    sdist = dist / sdist_proc.stdout.strip().splitlines()[-1]

    wheel_proc = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            *settings,
            "-w",
            dist,
            sdist,
        ],
        cwd=work,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, **(build_env or {})},
    )
    _ok(wheel_proc)
    (wheel,) = dist.glob("llamarcp-*.whl")

    venv = work / "venv"
    _ok(run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=CHILD_TIMEOUT))
    python = venv / "bin" / "python"
    _ok(
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "--no-index",
                "--no-deps",
                "--disable-pip-version-check",
                wheel,
            ],
            cwd=work,
            timeout=CHILD_TIMEOUT,
        )
    )
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run([python, "-c", purelib], timeout=CHILD_TIMEOUT).stdout.strip())
    # Dependencies (cffi, jinja2, fastapi, ...) come from this environment: a plain path line, so the editable
    # install of the checkout that lives there (a .pth hook of its own) stays inactive in the fresh venv.
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "zz-test-deps.pth").write_text("".join(f"{p}\n" for p in deps))

    env = {k: v for k, v in os.environ.items() if k not in ("LLAMARCP_LIB_PATH", "LLAMA_CPP_LIB_PATH", "PYTHONPATH")}
    env["LLAMARCP_CACHE_DIR"] = str(work / "empty-cache")
    cwd = work / "elsewhere"
    cwd.mkdir()
    log = wheel_proc.stdout + wheel_proc.stderr
    return Installed(sdist, wheel, log, python, site, env, cwd)


def _py(inst: Installed, *args: object, timeout: float = CHILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run([inst.python, *args], env=inst.env, cwd=inst.cwd, timeout=timeout)


def test_sdist_carries_the_pinned_tree(installed: Installed) -> None:
    import tarfile

    with tarfile.open(installed.sdist) as tar:
        names = set(tar.getnames())
    top = installed.sdist.name.removesuffix(".tar.gz")
    assert f"{top}/vendor/llama.cpp/include/llama.h" in names
    assert f"{top}/build_lib.py" in names and f"{top}/setup.py" in names
    assert not any(n.startswith(f"{top}/vendor/llama.cpp/models/") for n in names)  # only _pin.TREE_PATHS


def test_wheel_bundles_the_cached_library_and_its_stamp(installed: Installed) -> None:
    assert "up to date (nothing to do)" in installed.wheel_log  # the wheel reused the cache entry: no compile
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert installed.wheel.name.endswith(f"-py3-none-{platform}.whl")
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        stamp = json.loads(whl.read(f"llamarcp/_native/{_cache.STAMP_NAME}"))
        wheel_meta = whl.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert "llamarcp/_native/libllama.so" in names
    assert any(n.startswith("llamarcp/_native/libggml") for n in names)
    assert not any(n.startswith(("codegen/", "tests/")) for n in names)
    assert "Root-Is-Purelib: false" in wheel_meta
    assert stamp["commit"] == _pin.LLAMA_CPP_COMMIT and stamp["pinned"] is True
    assert stamp["key"] == _cache.pinned_default_lib_dir().parent.name


def test_installed_package_loads_its_bundled_library(installed: Installed) -> None:
    code = (
        "import llamarcp, llamarcp._lib as L\n"
        "llamarcp.lib.llama_backend_init()\n"
        "print(llamarcp.__file__); print(L.loaded_path())\n"
    )
    proc = _py(installed, "-c", code)
    _ok(proc)
    package_file, loaded = proc.stdout.split()
    assert Path(package_file).is_relative_to(installed.site)
    assert Path(loaded) == installed.site / "llamarcp" / "_native" / "libllama.so"


def test_cli_generates_text(installed: Installed, tiny_model_path: Path) -> None:
    proc = _py(installed, "-m", "llamarcp", "-m", tiny_model_path, "-p", "Hello", "-n", "8", "--temp", "0")
    _ok(proc)
    text = proc.stdout
    assert text.startswith("Hello") and len(text.strip()) > len("Hello")


def test_drift_manifest_diff(installed: Installed, tmp_path: Path) -> None:
    shipped = installed.site / "llamarcp" / "_generated" / "api.json"
    manifest = json.loads(shipped.read_text())
    gone = next(f["name"] for f in manifest["functions"] if f["name"].startswith("llama_"))
    newer = dict(manifest, functions=[f for f in manifest["functions"] if f["name"] != gone])
    new_path = tmp_path / "new.json"
    new_path.write_text(json.dumps(newer))
    proc = _py(installed, "-m", "llamarcp.drift", "diff", shipped, new_path, "--fail-on", "never")
    _ok(proc)
    assert gone in proc.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_health(installed: Installed, tiny_model_path: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [installed.python, "-m", "llamarcp.server", "--model", tiny_model_path, "--port", str(port), "-t", "1"]
    with log.open("wb") as out, spawned(cmd, stdout=out, stderr=out, env=installed.env, cwd=installed.cwd) as proc:
        for _ in range(1200):  # hang guard (~2 min), not a budget: the first answer ends the wait
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"server never answered /health:\n{log.read_text()}")
    assert health.status_code == 200, health.text


# --------------------------------------------------------------------------------- your own llama.cpp tree


@pytest.fixture(scope="module")
def own_tree() -> Path:
    """A llama.cpp tree other than the pin, whose library ci/setup.sh already built (the window's oldest)."""
    import build_lib

    tree = build_lib.ensure_source(build_lib.release_carrier("oldest"))
    try:
        build_lib.build(tree, allow_build=False)
    except build_lib.BuildError as exc:
        pytest.fail(f"{exc}: run `bash ci/setup.sh` (it builds the oldest release)")
    return tree


@pytest.fixture(scope="module")
def installed_own(tmp_path_factory: pytest.TempPathFactory, own_tree: Path) -> Installed:
    """`pip wheel --config-settings llama-cpp-source=TREE` (what `pip install` does), installed into a fresh venv."""
    return build_and_install(
        tmp_path_factory.mktemp("own"), settings=["--config-settings", f"llama-cpp-source={own_tree}"]
    )


def test_own_tree_wheel_bundles_its_library_and_bindings(installed_own: Installed, own_tree: Path) -> None:
    with zipfile.ZipFile(installed_own.wheel) as whl:
        stamp = json.loads(whl.read(f"llamarcp/_native/{_cache.STAMP_NAME}"))
        bindings = json.loads(whl.read("llamarcp/_native/bindings/bindings.json"))
    assert stamp["source"] == str(own_tree) and stamp["abi_fingerprint"] == bindings["fingerprint"]
    assert "llama_model_params" in bindings["cdef"] and "use_mmap" in bindings["cdef"]  # b8672: no load_mode yet
    log = installed_own.wheel_log
    assert "llamarcp: bindings generated from" in log and "a release of llamarcp's window" in log


def test_own_tree_install_loads_the_library_it_built(installed_own: Installed, tiny_model_path: Path) -> None:
    code = (
        "import llamarcp._lib as L, llamarcp._release as R\n"
        "from llamarcp import Llama\n"
        f"llm = Llama({str(tiny_model_path)!r}, n_ctx=128, verbose=False)\n"
        "text = llm('Once upon a time', max_tokens=6, temperature=0)['choices'][0]['text']\n"
        "sel = R.selection()\n"
        "print(L.loaded_path())\n"
        "print(sel.bindings.name, sel.bindings.is_pin, R.CUSTOM_BINDINGS_DIR.is_dir())\n"
        "print(repr(text))\n"
    )
    proc = _py(installed_own, "-c", code)
    _ok(proc)
    loaded, chosen, text = proc.stdout.strip().splitlines()[-3:]
    assert Path(loaded) == installed_own.site / "llamarcp" / "_native" / "libllama.so"
    assert chosen.split() == ["b8672", "False", "True"]
    assert len(text) > 2
