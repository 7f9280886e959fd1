"""One benchmark contender kept alive in its own process: llamarcp or llama-cpp-python.

run.py starts one worker per Python implementation (each under its own interpreter: the system one for
llamarcp, the benchmark venv for llama-cpp-python), loads the model once, then sends it one measurement at a
time as a JSON line on stdin, so the contenders can be interleaved round by round on a noisy machine.

Both implementations are driven through the same high-level calls (`Llama(...)`, `create_completion(...)`,
`reset()`), because llamarcp keeps llama-cpp-python's API shape; only the constructor keywords are filtered to
what each class accepts, and whatever could not be set is reported back.

Protocol: one JSON object per line in both directions. Requests carry "op" (load, tg, pp, quit); replies are
{"ok": true, ...} or {"ok": false, "error": "...", "traceback": "..."}. The worker moves fd 1 to stderr first,
so stray C-level prints can never corrupt the reply stream.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import time
import traceback
from typing import Any


class Worker:
    """One model, one `Llama` per context size: each test runs at llama-bench's n_ctx for that test."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.llm: Any = None
        self.llms: dict[int, Any] = {}
        self.factory: Any = None
        self.reference: dict[tuple[int, str, int], dict[str, Any]] = {}

    # -- ops -----------------------------------------------------------------------------------------------
    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        if self.impl not in ("llamarcp", "llama_cpp"):
            raise ValueError(f"unknown implementation {self.impl!r}")
        Llama = importlib.import_module(self.impl).Llama  # noqa: N806 (the class under test)
        imported = time.perf_counter()

        wanted = {
            "n_ctx": req["n_ctx"],
            "n_batch": req["n_batch"],
            "n_ubatch": req["n_batch"],
            "n_threads": req["n_threads"],
            "n_threads_batch": req["n_threads"],
            "flash_attn": req["flash_attn"],
            "swa_full": False,  # llama-bench's setting (the library default is a full-size sliding-window cache)
            "seed": req["seed"],
            "verbose": False,
        }
        if req.get("n_gpu_layers"):  # only when asked: the CPU rows keep the keyword set they always had
            wanted["n_gpu_layers"] = req["n_gpu_layers"]
        accepted = _accepted_keywords(Llama)
        kwargs = {k: v for k, v in wanted.items() if accepted is None or k in accepted}
        not_set = sorted(set(wanted) - set(kwargs))
        self.factory = lambda n_ctx: Llama(req["model"], **dict(kwargs, n_ctx=n_ctx))
        self.llm = self._llm(int(req["n_ctx"]))
        loaded = time.perf_counter()
        n_vocab = self.llm.n_vocab  # a property in llamarcp, a method in llama-cpp-python
        return {
            "n_vocab": int(n_vocab() if callable(n_vocab) else n_vocab),
            "import_s": imported - started,
            "load_s": loaded - imported,
            "kwargs": kwargs,
            "not_set": not_set,
            "version": _version(self.impl),
            "libraries": _mapped_libraries(),
            "extra_bufts": _extra_bufts(self.impl, self.llm),
        }

    def tg(self, req: dict[str, Any]) -> dict[str, Any]:
        """Greedy streamed generation; the rate counts tokens after the first chunk (prompt excluded)."""
        prompt, n_predict = req["prompt"], int(req["n_predict"])
        self.llm = self._llm(int(req["n_ctx"]))
        ref = self._reference(prompt, n_predict)
        self.llm.reset()
        chunks = 0
        pieces: list[str] = []
        t0 = time.perf_counter()
        t_first = 0.0
        for chunk in self.llm.create_completion(
            prompt, max_tokens=n_predict, temperature=0.0, repeat_penalty=1.0, stream=True
        ):
            if chunks == 0:
                t_first = time.perf_counter()
            chunks += 1
            pieces.append(chunk["choices"][0]["text"])
        t_end = time.perf_counter()
        text = "".join(pieces)
        n_tokens = ref["completion_tokens"]
        return {
            "n_tokens": n_tokens,
            "chunks": chunks,
            "first_chunk_s": t_first - t0,
            "total_s": t_end - t0,
            # n_tokens - 1 tokens are decoded, sampled and detokenized between the first chunk and the end.
            "tokens_per_s": (n_tokens - 1) / (t_end - t_first) if n_tokens > 1 and t_end > t_first else 0.0,
            "text": text,
            "matches_unstreamed": text == ref["text"],
        }

    def pp(self, req: dict[str, Any]) -> dict[str, Any]:
        """Prompt processing: `Llama.eval(tokens)` from an empty context, like llama-bench's pp (decode only).

        Like llama-bench, which runs each test once untimed first, an untimed run of the same length (other
        token ids) comes first, so llama.cpp's graph for this batch shape is built before the clock starts.
        """
        tokens = [int(t) for t in req["tokens"]]
        self.llm = self._llm(int(req["n_ctx"]))
        if req.get("warmup", True):
            self.llm.reset()
            self.llm.eval(tokens[1:] + tokens[:1])
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(tokens)
        elapsed = time.perf_counter() - t0
        return {"n_tokens": len(tokens), "seconds": elapsed, "tokens_per_s": len(tokens) / elapsed}

    # -- helpers -------------------------------------------------------------------------------------------
    def _llm(self, n_ctx: int) -> Any:
        if n_ctx not in self.llms:
            self.llms[n_ctx] = self.factory(n_ctx)
        return self.llms[n_ctx]

    def _reference(self, prompt: str, n_predict: int) -> dict[str, Any]:
        """One unstreamed greedy run per (context, prompt, n): warms up, and gives the exact token count."""
        key = (id(self.llm), prompt, n_predict)
        if key not in self.reference:
            self.llm.reset()
            out = self.llm.create_completion(prompt, max_tokens=n_predict, temperature=0.0, repeat_penalty=1.0)
            self.reference[key] = {
                "text": out["choices"][0]["text"],
                "completion_tokens": int(out["usage"]["completion_tokens"]),
                "finish_reason": out["choices"][0].get("finish_reason"),
            }
        return self.reference[key]

    def close(self) -> None:
        for llm in self.llms.values():
            if hasattr(llm, "close"):
                llm.close()
        self.llms.clear()
        self.llm = None


def _accepted_keywords(cls: Any) -> set[str] | None:
    """Keyword names the constructor takes, or None when it takes **kwargs (then everything is passed)."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _extra_bufts(impl: str, llm: Any) -> bool | None:
    """Whether the model was loaded with llama.cpp's extra CPU buffer types (weight repacking, AMX)."""
    if impl == "llama_cpp":
        return bool(llm.model_params.use_extra_bufts)
    model = getattr(llm, "_model", None)
    params = getattr(model, "params", None)
    if params is not None and hasattr(params, "use_extra_bufts"):
        return bool(params.use_extra_bufts)
    try:
        from llamarcp import ffi, lib
        from llamarcp._cpu import default_use_extra_bufts

        return bool(default_use_extra_bufts(lib, ffi))
    except ImportError:
        return None


def _version(impl: str) -> str:
    from importlib import metadata

    dist = "llamarcp" if impl == "llamarcp" else "llama-cpp-python"
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(impl)
        return str(getattr(module, "__version__", "unknown (source tree)"))


def _mapped_libraries() -> dict[str, str]:
    """The llama/ggml shared objects really mapped into this process (proof of which library is used)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = os.path.basename(path)
                if name.startswith(("libllama", "libggml")) and ".so" in name:
                    found[name.split(".so")[0]] = os.path.realpath(path)
    except OSError:
        pass
    return found


def main() -> int:
    impl = sys.argv[1]
    # Replies go to the original stdout; anything else that writes to fd 1 lands on stderr instead.
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(impl)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        if op == "quit":
            worker.close()
            reply_stream.write(json.dumps({"ok": True}) + "\n")
            return 0
        try:
            handler = {"load": worker.load, "tg": worker.tg, "pp": worker.pp}[op]
            reply = {"ok": True, **handler(req)}
        except Exception as exc:  # reported to the runner, which records the failure verbatim
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        reply_stream.write(json.dumps(reply) + "\n")
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
