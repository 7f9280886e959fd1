"""llamarcp.validate.mmproj: every projector libmtmd crashes on is refused in Python, checked in child processes.

The broken projectors are the random ones of tests/tiny_mmproj.py with one thing changed. Each case was a signal
in raw libmtmd (b11549): SIGSEGV for a missing tensor, SIGABRT for a wrong shape or key type, silently wrong
weights for a cut file; `test_raw_libmtmd_really_crashes_on_a_missing_projector_tensor` keeps one of them honest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from procs import run
from tiny_mmproj import MLP_IMAGE_TOKENS, N_EMBD, N_FF, write_tiny_mmproj

from llamarcp.errors import ModelLoadError
from llamarcp.validate.mmproj import check_mmproj

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (case name, write_tiny_mmproj keywords, words the error must contain)
BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("no mm.2.weight", {"omit": ("mm.2.weight",)}, "'mm.2.weight' is missing"),
    ("no mm.0.weight", {"omit": ("mm.0.weight",)}, "'mm.0.weight' is missing"),
    ("no mm.0.bias", {"omit": ("mm.0.bias",)}, "'mm.0.bias' is missing"),
    ("no patch embedding", {"omit": ("v.patch_embd.weight",)}, "'v.patch_embd.weight' is missing"),
    ("no position embedding", {"omit": ("v.position_embd.weight",)}, "'v.position_embd.weight' is missing"),
    ("no attn_q", {"omit": ("v.blk.0.attn_q.weight",)}, "'v.blk.0.attn_q.weight' is missing"),
    ("ffn_up of the wrong shape", {"shapes": {"v.blk.1.ffn_up.weight": (N_FF + 8, N_EMBD)}}, "ffn_up/ffn_down"),
    ("head_count not dividing", {"keys": {"clip.vision.attention.head_count": 5}}, "does not divide"),
    ("embedding_length off", {"keys": {"clip.vision.embedding_length": N_EMBD + 8}}, "expected"),
    ("position rows off", {"shapes": {"v.position_embd.weight": (30, N_EMBD)}}, "'v.position_embd.weight'"),
    ("image_size as a string", {"keys": {"clip.vision.image_size": ("48", "STRING")}}, "has type string"),
    ("epsilon as uint32", {"keys": {"clip.vision.attention.layer_norm_epsilon": (1, "UINT32")}}, "not float32"),
    ("no image_mean", {"omit": ("clip.vision.image_mean",)}, "'clip.vision.image_mean' is missing"),
    ("no encoder at all", {"omit": ("clip.has_vision_encoder",)}, "both absent or false"),
    ("unknown projector type", {"keys": {"clip.projector_type": ("bogus", "STRING")}}, "'bogus'"),
    ("projection wider than the model", {"shapes": {"mm.2.weight": (128, 96), "mm.2.bias": (128,)}}, "width 128"),
    ("patch larger than image", {"keys": {"clip.vision.patch_size": 64}}, "exceeds"),
]


def _write(tmp: Path, name: str, kwargs: dict[str, Any]) -> Path:
    import gguf

    keys = {}
    for key, value in kwargs.get("keys", {}).items():
        keys[key] = (value[0], getattr(gguf.GGUFValueType, value[1])) if isinstance(value, tuple) else value
    return write_tiny_mmproj(tmp / (name.replace(" ", "_") + ".gguf"), **{**kwargs, "keys": keys})


@pytest.fixture(scope="module")
def image_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from media_files import png

    path = tmp_path_factory.mktemp("img") / "rgb.png"
    path.write_bytes(png(40, 30, seed=3))
    return path


@pytest.mark.parametrize(("name", "kwargs", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_projector_is_refused_naming_the_problem(tmp_path: Path, name: str, kwargs: Any, words: str) -> None:
    path = _write(tmp_path, name, kwargs)
    with pytest.raises(ModelLoadError) as info:
        check_mmproj(path, n_embd_text=64)
    assert words in str(info.value) and str(path) in str(info.value)


def test_a_cut_file_is_refused(tmp_path: Path) -> None:
    path = write_tiny_mmproj(tmp_path / "whole.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])  # inside the last tensor: gguf.cpp would read the rest as garbage
    with pytest.raises(ModelLoadError, match="truncated: tensor .* ends at byte"):
        check_mmproj(cut)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:200])
    with pytest.raises(ModelLoadError):
        check_mmproj(header_only)


def test_files_that_are_not_projectors_are_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        check_mmproj(tmp_path / "absent.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf at all")
    with pytest.raises(ModelLoadError, match="bad magic"):
        check_mmproj(tmp_path / "text.gguf")
    with pytest.raises(ModelLoadError, match="not 'clip'"):
        check_mmproj(tiny_model_path)


def test_good_projectors_pass_with_their_facts(tmp_path: Path) -> None:
    info = check_mmproj(write_tiny_mmproj(tmp_path / "mlp.gguf"), n_embd_text=64)
    assert (info.projector_type, info.has_vision, info.has_audio, info.n_embd_out) == ("mlp", True, False, 64)
    assert (info.image_size // info.patch_size) ** 2 == MLP_IMAGE_TOKENS
    gemma = check_mmproj(write_tiny_mmproj(tmp_path / "g3.gguf", "gemma3", 640), n_embd_text=640)
    assert (gemma.projector_type, gemma.n_embd_out) == ("gemma3", 640)
    with pytest.raises(ModelLoadError, match="language model's embedding_length is 64"):
        check_mmproj(tmp_path / "g3.gguf", n_embd_text=64)


def test_every_broken_projector_ends_in_an_exception_in_a_real_process(
    tmp_path: Path, tiny_model_path: Path, image_png: Path
) -> None:
    """The whole path (Llama(mmproj=...) and an image request) in a child: no case may end in a signal."""
    from tiny_mmproj import write_tiny_audio_mmproj

    paths = [_write(tmp_path, name, kwargs) for name, kwargs, _ in BROKEN]
    paths += [write_tiny_audio_mmproj(tmp_path / f"audio{i}.gguf", **kw) for i, (_, kw, _) in enumerate(AUDIO_BROKEN)]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(write_tiny_mmproj(tmp_path / "whole.gguf").read_bytes()[:-64])
    good = write_tiny_mmproj(tmp_path / "good.gguf")
    cmd = [sys.executable, HERE / "mmproj_child.py", tiny_model_path, image_png, *paths, cut, good]
    proc = run(cmd, timeout=300, cwd=ROOT, env=_env())
    assert proc.returncode == 0, f"child died with {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(paths) + 2
    for result in results[:-1]:
        assert result["error"] == "ModelLoadError", result
    assert results[-1]["error"] is None, results[-1]  # the unbroken projector captions the image


def test_raw_libmtmd_really_crashes_on_a_missing_projector_tensor(tmp_path: Path, tiny_model_path: Path) -> None:
    """Keeps the premise honest: without the Python check, libmtmd takes the process down."""
    path = write_tiny_mmproj(tmp_path / "no_mm2.gguf", omit=("mm.2.weight",))
    script = (
        "import sys\n"
        "from llamarcp import Llama, lib\n"
        "from llamarcp._ffi import ffi\n"
        "llm = Llama(sys.argv[1], n_ctx=64, n_threads=1)\n"
        "params = lib.mtmd_context_params_default()\n"
        "params.warmup = False\n"
        "ptr = lib.mtmd_init_from_file(sys.argv[2].encode(), llm._model.ptr, params)\n"
        "print('survived', ptr == ffi.NULL)\n"
    )
    proc = run([sys.executable, "-c", script, tiny_model_path, path], timeout=120, cwd=ROOT, env=_env())
    assert proc.returncode < 0, f"raw libmtmd did not crash: {proc.stdout}"


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    return env


def _accepted_variants(tmp_path: Path) -> list[Path]:
    """Real projectors vary: old Qwen2-VL ones say feed_forward_length 0, old LLaVA converters swapped up/down,
    LLaVA's CLIP has a class embedding (and one more position row)."""
    swapped = {f"v.blk.{i}.ffn_{w}.weight": shape for i in range(2) for w, shape in
               (("up", (N_EMBD, N_FF)), ("down", (N_FF, N_EMBD)))}  # fmt: skip
    with_class = {"v.class_embd": (N_EMBD,), "v.position_embd.weight": (MLP_IMAGE_TOKENS + 1, N_EMBD)}
    return [
        write_tiny_mmproj(tmp_path / "n_ff0.gguf", keys={"clip.vision.feed_forward_length": 0}),
        write_tiny_mmproj(tmp_path / "swapped.gguf", shapes=swapped),
        write_tiny_mmproj(tmp_path / "class.gguf", shapes=with_class),
    ]


def test_layouts_libmtmd_accepts_are_not_refused(tmp_path: Path, tiny_model_path: Path, image_png: Path) -> None:
    variants = _accepted_variants(tmp_path)
    for path in variants:
        check_mmproj(path, 64)
    cmd = [sys.executable, HERE / "mmproj_child.py", tiny_model_path, image_png, *variants]
    proc = run(cmd, timeout=300, cwd=ROOT, env=_env())
    assert proc.returncode == 0, f"child died with {proc.returncode}:\n{proc.stderr[-3000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["error"] for r in results] == [None] * len(variants), results


AUDIO_BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("no q bias", {"omit": ("a.blk.0.attn_q.bias",)}, "'a.blk.0.attn_q.bias' is missing"),
    ("no ln2 bias", {"omit": ("a.blk.1.ln2.bias",)}, "'a.blk.1.ln2.bias' is missing"),
    ("no position embedding", {"omit": ("a.position_embd.weight",)}, "a.position_embd.weight"),
    ("no conv", {"omit": ("a.conv1d.2.weight",)}, "'a.conv1d.2.weight' is missing"),
    ("no mel bins", {"omit": ("clip.audio.num_mel_bins",)}, "'clip.audio.num_mel_bins' is missing"),
]


@pytest.mark.parametrize(("name", "kwargs", "words"), AUDIO_BROKEN, ids=[b[0] for b in AUDIO_BROKEN])
def test_broken_audio_projector_is_refused(tmp_path: Path, name: str, kwargs: Any, words: str) -> None:
    from tiny_mmproj import write_tiny_audio_mmproj

    path = write_tiny_audio_mmproj(tmp_path / "audio.gguf", **kwargs)
    with pytest.raises(ModelLoadError) as info:
        check_mmproj(path, n_embd_text=64)
    assert words in str(info.value)


def test_audio_projector_facts(tmp_path: Path) -> None:
    from tiny_mmproj import write_tiny_audio_mmproj

    info = check_mmproj(write_tiny_audio_mmproj(tmp_path / "audio.gguf"), n_embd_text=64)
    assert (info.projector_type, info.has_vision, info.has_audio, info.n_embd_out) == ("qwen2a", False, True, 64)
    with pytest.raises(ModelLoadError, match="embedding_length is 640"):
        check_mmproj(tmp_path / "audio.gguf", n_embd_text=640)
