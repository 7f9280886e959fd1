"""`llama_cpp.mtmd_cpp` (llamarcp.compat.mtmd_module): llama-cpp-python 0.3.36's ctypes module of libmtmd, served
from the generated tables: every name it exposes, its Python-level wrappers, a program written against it running
unchanged on a random projector, and the inputs libmtmd would crash on refused before the C call."""

from __future__ import annotations

import ctypes
import json
import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from media_files import png
from procs import run
from tiny_mmproj import GEMMA3_IMAGE_TOKENS, MLP_IMAGE_TOKENS, write_tiny_mmproj

from llamarcp import Llama
from llamarcp.compat import ctypes_face, lowlevel, mtmd_module

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLE = DATA / "llama_cpp_python_mtmd_example.py"


@pytest.fixture(autouse=True)
def _needs_libmtmd() -> None:
    if ctypes_face.cdll("mtmd") is None:
        pytest.skip("no libmtmd beside the loaded libllama (python build_lib.py --mtmd)")


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mmproj(tmp_path_factory.mktemp("mtmd_cpp") / "mmproj-mlp.gguf", "mlp", 64)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mtmd_cpp_images")
    paths = [folder / "a.png", folder / "b.png"]
    for seed, path in enumerate(paths, start=1):
        path.write_bytes(png(40, 30, seed=seed))
    return paths


def _run_example(*args: Any) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = run([sys.executable, str(EXAMPLE), *map(str, args)], timeout=300, cwd=ROOT, env=env)
    return done


def test_every_name_of_llama_cpp_python_0_3_36_resolves() -> None:
    lines = (DATA / "mtmd_cpp_names_llama_cpp_python_0.3.36.txt").read_text().splitlines()
    names = [line for line in lines if line and not line.startswith("#")]
    assert len(names) > 120
    missing = [n for n in names if not hasattr(mtmd_module, n)]
    assert missing == []
    listed = set(dir(mtmd_module))
    assert {"mtmd_helper_bitmap_init_from_buf_wrapper", "mtmd_get_audio_bitrate", "mtmd_input_text"} <= listed
    # llama-cpp-python's types: handles as int NewTypes with c_void_p ctypes, structs as ctypes.Structure
    assert mtmd_module.mtmd_bitmap_p_ctypes is ctypes.c_void_p and mtmd_module.mtmd_bitmap_p(5) == 5
    assert issubclass(mtmd_module.mtmd_helper_bitmap_wrapper, ctypes.Structure)
    assert [f[0] for f in mtmd_module.mtmd_input_text._fields_] == ["text", "text_len", "add_special", "parse_special"]
    assert mtmd_module.mtmd_helper_bitmap_init_from_buf_wrapper.restype is mtmd_module.mtmd_helper_bitmap_wrapper
    assert mtmd_module.mtmd_tokenize.argtypes[2]._type_ is mtmd_module.mtmd_input_text


def test_a_llama_cpp_python_program_runs_unchanged(tiny_model_path: Path, mmproj: Path, images: list[Path]) -> None:
    a, b = images
    done = _run_example(tiny_model_path, mmproj, 64, 64, a, b, a)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["marker"] == "<__media__>"
    first, second, again = out["rows"]
    kinds = [c[0] for c in first["chunks"]]
    assert kinds == ["text", "image", "text"] and first["chunks"][1][1] == MLP_IMAGE_TOKENS
    assert first["chunks"][0][2] == 1  # BOS first: add_special was read from the struct
    n_text = first["chunks"][0][1] + first["chunks"][2][1]
    assert first["n_past"] == first["n_tokens"] == n_text + MLP_IMAGE_TOKENS
    assert first["logits"] == again["logits"]  # the same image: the same logits
    assert first["logits"] != second["logits"]  # another image: other logits


@pytest.mark.parametrize("release", ["oldest", "middle"])
def test_the_program_runs_on_other_releases_of_the_window(
    release: str, tiny_model_path: Path, mmproj: Path, images: list[Path]
) -> None:
    """The same program on b8672 (the bitmap helpers return the bitmap: no `_wrapper` there) and b10068 (a wrapper
    struct without `opt`), through the tables of that release (ci/setup.sh builds both with libmtmd)."""
    import build_lib

    carrier = build_lib.release_carrier(release)
    try:
        lib_dir = build_lib.build(build_lib.ensure_source(carrier), allow_build=False, libraries=["mtmd"])
    except build_lib.BuildError as exc:
        pytest.fail(f"{exc}: run `bash ci/setup.sh` (it builds the oldest and middle releases with libmtmd)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLAMARCP_LIB_PATH": str(lib_dir)}
    env.pop("LLAMA_CPP_LIB_PATH", None)
    args = [tiny_model_path, mmproj, 64, 64, images[0], images[1]]
    done = run([sys.executable, str(EXAMPLE), *map(str, args)], timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
    assert [c[0] for c in first["chunks"]] == ["text", "image", "text"] and first["chunks"][1][1] == MLP_IMAGE_TOKENS
    assert first["n_past"] == first["n_tokens"] and first["logits"] != second["logits"]


def test_the_crash_inputs_are_python_errors(
    tiny_model_path: Path, mmproj: Path, images: list[Path], tmp_path: Path
) -> None:
    """Through the ctypes face too: a broken projector (SIGSEGV in libmtmd) and an n_batch above the context's."""
    broken = write_tiny_mmproj(tmp_path / "no-mm2.gguf", "mlp", 64, omit=("mm.2.weight",))
    done = _run_example(tiny_model_path, broken, 64, 64, images[0])
    assert done.returncode == 1 and "ModelLoadError" in done.stderr and "mm.2.weight" in done.stderr, done.stderr
    done = _run_example(tiny_model_path, mmproj, 64, 1000, images[0])
    assert done.returncode == 1 and "n_batch=1000 is outside 1..64" in done.stderr, done.stderr[-2000:]
    wide = write_tiny_mmproj(tmp_path / "wide.gguf", "mlp", 128)  # projects to 128, the tiny llama is 64 wide
    done = _run_example(tiny_model_path, wide, 64, 64, images[0])
    assert done.returncode == 1 and "embedding_length is 64" in done.stderr, done.stderr[-2000:]


def test_python_level_wrappers_and_null_arguments(tiny_model_path: Path, mmproj: Path, images: list[Path]) -> None:
    with Llama(str(tiny_model_path), n_ctx=128, n_batch=32, n_threads=1, verbose=False) as llm:
        model_address = lowlevel.llama_get_model(llm.ctx)
        assert model_address
        model = ctypes.c_void_p(model_address)
        params = mtmd_module.mtmd_context_params_default()
        params.use_gpu, params.print_timings, params.n_threads = False, False, 1
        with pytest.raises(ValueError, match="'text_model' is NULL"):
            mtmd_module.mtmd_init_from_file(str(mmproj).encode(), None, params)
        mctx = mtmd_module.mtmd_init_from_file(str(mmproj).encode(), model, params)
        assert isinstance(mctx, int)
        try:
            data = images[0].read_bytes()
            buffer = (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data))
            wrapped = mtmd_module.mtmd_helper_bitmap_init_from_buf_wrapper(
                mctx, buffer, len(data), False, mtmd_module.mtmd_helper_init_opt_default()
            )
            assert isinstance(wrapped, mtmd_module.mtmd_helper_bitmap_wrapper) and wrapped.bitmap
            assert mtmd_module.mtmd_bitmap_get_nx(wrapped.bitmap) == 40
            mtmd_module.mtmd_bitmap_free(wrapped.bitmap)
            bitmap = mtmd_module.mtmd_helper_bitmap_init_from_file(mctx, str(images[1]).encode(), False)
            assert isinstance(bitmap, int) and mtmd_module.mtmd_bitmap_get_ny(bitmap) == 30
            mtmd_module.mtmd_bitmap_free(bitmap)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rate = mtmd_module.mtmd_get_audio_bitrate(mctx)
            assert rate == mtmd_module.mtmd_get_audio_sample_rate(mctx)
            assert [w.category for w in caught] == [DeprecationWarning]
            chunks = mtmd_module.mtmd_input_chunks_init()
            n_past = ctypes.c_int32(0)
            with pytest.raises(ValueError, match="'lctx' is NULL"):
                mtmd_module.mtmd_helper_eval_chunks(mctx, None, chunks, 0, 0, 32, True, ctypes.byref(n_past))
            with pytest.raises(ValueError, match="n_batch=0 is outside 1..32"):
                mtmd_module.mtmd_helper_eval_chunks(mctx, llm.ctx, chunks, 0, 0, 0, True, ctypes.byref(n_past))
            text = mtmd_module.mtmd_input_text()
            text.text, text.text_len = b"<__media__>", 11
            with pytest.raises(ValueError, match="'output' is NULL"):  # a SIGSEGV in libmtmd
                mtmd_module.mtmd_tokenize(mctx, None, ctypes.byref(text), None, 0)
            with pytest.raises(ValueError, match=r"bitmaps\[0\] is NULL"):
                mtmd_module.mtmd_tokenize(mctx, chunks, ctypes.byref(text), (ctypes.c_void_p * 1)(), 1)
            with pytest.raises(ctypes_face.BufferTooSmallError, match="holds 12 bytes but a 40x30 RGB bitmap reads"):
                mtmd_module.mtmd_bitmap_init(40, 30, (ctypes.c_uint8 * 12)())  # a SIGSEGV in libmtmd
            with pytest.raises(ValueError, match="0x30 bitmap is empty"):
                mtmd_module.mtmd_bitmap_init(0, 30, (ctypes.c_uint8 * 12)())
            pixels = (ctypes.c_uint8 * (40 * 30 * 3))(*([200] * (40 * 30 * 3)))
            bitmap = mtmd_module.mtmd_bitmap_init(40, 30, pixels)
            assert mtmd_module.mtmd_tokenize(mctx, chunks, ctypes.byref(text), (ctypes.c_void_p * 1)(bitmap), 1) == 0
            image = mtmd_module.mtmd_input_chunks_get(chunks, 0)
            assert mtmd_module.mtmd_input_chunk_get_type(image) == mtmd_module.MTMD_INPUT_CHUNK_TYPE_IMAGE
            assert mtmd_module.mtmd_input_chunk_get_n_tokens(image) == MLP_IMAGE_TOKENS
            mtmd_module.mtmd_bitmap_free(bitmap)
            mtmd_module.mtmd_input_chunks_free(chunks)
        finally:
            mtmd_module.mtmd_free(mctx)


def test_wrappers_follow_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """Releases before b9713 return the bitmap itself: no `_wrapper` names there, the C function as it is."""
    old = {
        "mtmd_helper_bitmap_init_from_buf": ("mtmd", "c_void_p", (("ctx", "c_void_p"), ("buf", "*c_ubyte"))),
        "mtmd_get_audio_bitrate": ("mtmd", "c_int", (("ctx", "c_void_p"),)),
    }
    monkeypatch.setattr(mtmd_module, "table", lambda: SimpleNamespace(FUNCTIONS=old))
    assert mtmd_module._unwrapped_functions() == []
    assert mtmd_module._python_level_names() == []  # the release declares mtmd_get_audio_bitrate itself


@pytest.mark.slow
def test_a_non_causal_image_larger_than_n_ubatch_is_refused(default_model_path: Path, tmp_path: Path) -> None:
    """gemma3 decodes its image tokens non-causally in one ubatch; llama.cpp aborts when they do not fit."""
    mmproj = write_tiny_mmproj(tmp_path / "mmproj-gemma3.gguf", "gemma3", 640)
    image = tmp_path / "a.png"
    image.write_bytes(png(40, 30, seed=3))
    done = _run_example(default_model_path, mmproj, GEMMA3_IMAGE_TOKENS - 1, 8, image)
    assert done.returncode == 1 and f"needs n_ubatch >= {GEMMA3_IMAGE_TOKENS}" in done.stderr, done.stderr[-2000:]
    done = _run_example(default_model_path, mmproj, 64, 64, image)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])["rows"][0]
    assert ["image", GEMMA3_IMAGE_TOKENS] in row["chunks"]
