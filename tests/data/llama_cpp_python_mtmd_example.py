"""A program written against llama-cpp-python 0.3.36's ctypes API (`llama_cpp.llama_cpp`, `llama_cpp.mtmd_cpp`)
that runs unchanged on llamarcp after `install_as_llama_cpp()` (tests/test_compat_mtmd_cpp.py runs it).

    python llama_cpp_python_mtmd_example.py MODEL MMPROJ N_UBATCH EVAL_N_BATCH IMAGE...

Prints one JSON line: per image its chunks, positions and the first logits after evaluating the prompt.
"""

import ctypes
import json
import sys

import llamarcp

llamarcp.install_as_llama_cpp()

import llama_cpp  # noqa: E402
from llama_cpp import mtmd_cpp  # noqa: E402

model_path, mmproj_path, n_ubatch, eval_n_batch, images = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:],
)  # fmt: skip
model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
cparams = llama_cpp.llama_context_default_params()
cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 256, 64, n_ubatch
cparams.n_threads = cparams.n_threads_batch = 1
ctx = llama_cpp.llama_init_from_model(model, cparams)

params = mtmd_cpp.mtmd_context_params_default()
params.use_gpu = False
params.print_timings = False
params.n_threads = 1
mctx = mtmd_cpp.mtmd_init_from_file(mmproj_path.encode(), model, params)
if not mctx or not mtmd_cpp.mtmd_support_vision(mctx):
    raise SystemExit("no vision")
marker = mtmd_cpp.mtmd_default_marker().decode()
rows = []
for image in images:
    with open(image, "rb") as f:
        data = f.read()
    bitmap = mtmd_cpp.mtmd_helper_bitmap_init_from_buf(
        mctx, (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data)), len(data), False
    )
    text = mtmd_cpp.mtmd_input_text()
    prompt = f"USER: {marker}\nWhat is in the picture?\nASSISTANT:".encode()
    text.text = prompt
    text.text_len = len(prompt)
    text.add_special = True
    text.parse_special = True
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
    if mtmd_cpp.mtmd_tokenize(mctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
        raise SystemExit("mtmd_tokenize failed")
    kinds = []
    for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
        chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
        if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            kinds.append(["image", mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)])
        else:
            n_tokens = ctypes.c_size_t()
            tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n_tokens))
            kinds.append(["text", n_tokens.value, tokens[0]])
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    new_n_past = llama_cpp.llama_pos(0)
    rc = mtmd_cpp.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, eval_n_batch, True, ctypes.byref(new_n_past))
    if rc != 0:
        raise SystemExit(f"mtmd_helper_eval_chunks returned {rc}")
    logits = llama_cpp.llama_get_logits_ith(ctx, -1)
    rows.append(
        {
            "chunks": kinds,
            "n_past": new_n_past.value,
            "n_tokens": mtmd_cpp.mtmd_helper_get_n_tokens(chunks),
            "logits": [logits[i] for i in range(16)],
        }
    )
    mtmd_cpp.mtmd_input_chunks_free(chunks)
    mtmd_cpp.mtmd_bitmap_free(bitmap)
mtmd_cpp.mtmd_free(mctx)
llama_cpp.llama_free(ctx)
llama_cpp.llama_model_free(model)
print(json.dumps({"marker": marker, "rows": rows}))
