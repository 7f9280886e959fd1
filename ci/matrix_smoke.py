"""One release's smoke for ci/matrix.py, run in a child process with LLAMARCP_LIB_PATH set to that release's build.

Prints one JSON object: the release llamarcp matched the library to, and per check "ok" or the error. Checks on the
tiny random model: greedy text, chat, prompt-lookup speculation (same text), the server (in-process, chat
completion), penalties, state file round trip, grammar, batching with n_parallel=4, embeddings, an image chat
(a random mlp projector, libmtmd of the same release); on
gemma-3-270m (with --gemma): greedy text of a fixed prompt, and the same through n_parallel=4.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

GEMMA_PROMPT = "The three primary colors are"
JSON_GRAMMAR = r'root ::= "{" [a-z]+ ":" [0-9]+ "}"'


def _check(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    try:
        value = fn()
        results[name] = "ok" if value is None else value
    except Exception as exc:  # noqa: BLE001 - a smoke reports every failure and goes on
        results[name] = f"FAIL {type(exc).__name__}: {exc}"[:400]
        traceback.print_exc(file=sys.stderr)


def tiny_checks(results: dict[str, Any], model_path: Path, bert_path: Path) -> None:
    from llamarcp import Llama

    llm = Llama(str(model_path), n_ctx=256, verbose=False, seed=1)

    def greedy() -> str:
        out = llm("Once upon a time", max_tokens=12, temperature=0)
        text = out["choices"][0]["text"]
        assert out["usage"]["completion_tokens"] > 0
        return text

    def chat() -> None:
        reply = llm.create_chat_completion(
            [{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, chat_format="chatml"
        )
        assert reply["choices"][0]["message"]["role"] == "assistant"

    def penalties() -> None:
        out = llm("Once upon a time", max_tokens=8, temperature=0.7, repeat_penalty=1.3, seed=3)
        assert out["usage"]["completion_tokens"] > 0

    def state() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.bin"
            llm.reset()
            first = llm("Once upon a time", max_tokens=6, temperature=0)["choices"][0]["text"]
            llm.save_state_file(str(path))
            other = Llama(str(model_path), n_ctx=256, verbose=False)
            other.load_state_file(str(path))
            again = other("Once upon a time", max_tokens=6, temperature=0)["choices"][0]["text"]
            other.close()
            assert first == again, (first, again)

    def grammar() -> str:
        from llamarcp.llama_grammar import LlamaGrammar

        out = llm("x", max_tokens=16, temperature=0, grammar=LlamaGrammar.from_string(JSON_GRAMMAR))
        text = out["choices"][0]["text"]
        assert text.startswith("{"), text
        return text

    def speculative() -> None:
        from llamarcp.llama_speculative import LlamaPromptLookupDecoding

        prompt = "one two three four one two three four one two three"
        plain = llm(prompt, max_tokens=10, temperature=0)["choices"][0]["text"]
        drafted = Llama(str(model_path), n_ctx=256, verbose=False, draft_model=LlamaPromptLookupDecoding())
        text = drafted(prompt, max_tokens=10, temperature=0)["choices"][0]["text"]
        drafted.close()
        assert text == plain, (text, plain)

    def server() -> None:
        from fastapi.testclient import TestClient

        from llamarcp.server import ServerSettings, create_app

        settings = ServerSettings(model_alias="tiny", disable_ping_events=True)
        with TestClient(create_app(settings, llama=llm)) as client:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["role"] == "assistant"

    _check(results, "greedy", greedy)
    _check(results, "chat", chat)
    _check(results, "speculative", speculative)
    _check(results, "server", server)
    _check(results, "penalties", penalties)
    _check(results, "state", state)
    _check(results, "grammar", grammar)
    llm.close()

    def batching() -> None:
        solo = Llama(str(model_path), n_ctx=256, verbose=False)
        prompts = ["Once upon a time", "The sky is", "In the beginning", "A B C"]
        alone = [solo(p, max_tokens=8, temperature=0)["choices"][0]["text"] for p in prompts]
        solo.close()
        many = Llama(str(model_path), n_ctx=256, n_parallel=4, verbose=False)
        together = [c["choices"][0]["text"] for c in many.create_completions(prompts, max_tokens=8, temperature=0)]
        many.close()
        assert together == alone, (together, alone)

    def embeddings() -> int:
        emb = Llama(str(bert_path), embedding=True, verbose=False)
        vectors = emb.embed(["hello world", "good night"])
        emb.close()
        assert len(vectors) == 2 and len(vectors[0]) > 0
        return len(vectors[0])

    def image() -> int:
        import base64

        from media_files import png
        from tiny_mmproj import MLP_IMAGE_TOKENS, write_tiny_mmproj

        mmproj = model_path.parent / "matrix-mlp.gguf"
        if not mmproj.is_file():
            write_tiny_mmproj(mmproj, "mlp", 64)
        vision = Llama(str(model_path), mmproj=str(mmproj), n_ctx=512, verbose=False)
        answers = []
        for seed in (1, 2):
            uri = "data:image/png;base64," + base64.b64encode(png(40, 30, seed=seed)).decode()
            content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "Describe."}]
            reply = vision.create_chat_completion(
                [{"role": "user", "content": content}], max_tokens=6, temperature=0, chat_format="chatml"
            )
            answers.append(reply)
        vision.close()
        prompt_tokens = answers[0]["usage"]["prompt_tokens"]
        assert prompt_tokens > MLP_IMAGE_TOKENS, prompt_tokens  # the image's 36 tokens are in the prompt
        return int(prompt_tokens)

    _check(results, "batching", batching)
    _check(results, "embeddings", embeddings)
    _check(results, "image", image)


def gemma_checks(results: dict[str, Any]) -> None:
    from llamarcp import Llama
    from llamarcp.models import default_model_path

    llm = Llama(str(default_model_path()), n_ctx=512, verbose=False)

    def text() -> str:
        out = llm(GEMMA_PROMPT, max_tokens=24, temperature=0, logprobs=2)
        choice = out["choices"][0]
        # Per token: its text and the log-probability margin over the runner-up (near 0: a near tie kernels tip).
        steps = []
        for token, top in zip(choice["logprobs"]["tokens"], choice["logprobs"]["top_logprobs"]):
            best = sorted(top.values(), reverse=True)
            steps.append([token, round(best[0] - best[1], 4) if len(best) > 1 else None])
        results["gemma_steps"] = steps
        return str(choice["text"])

    _check(results, "gemma_text", text)
    llm.close()


def main() -> int:
    import tiny_model

    from llamarcp import _release
    from llamarcp.models import models_dir

    gemma = "--gemma" in sys.argv
    results: dict[str, Any] = {}
    selection = _release.selection()
    results["release"] = selection.bindings.name
    results["how"] = selection.how
    if selection.error is not None:
        results["error"] = str(selection.error)
        print(json.dumps(results))
        return 1
    source = _release_source()
    cache = models_dir() / "matrix"
    cache.mkdir(parents=True, exist_ok=True)
    model = cache / f"{tiny_model.TINY_MODEL_VERSION}.gguf"
    if not model.is_file():
        tiny_model.write_tiny_model(model, source / "models" / tiny_model.VOCAB_FILE)
    bert = cache / f"{tiny_model.TINY_MODEL_VERSION}-bert.gguf"
    if not bert.is_file():
        tiny_model.write_tiny_bert(bert, source / "models" / tiny_model.BERT_VOCAB_FILE)
    tiny_checks(results, model, bert)
    if gemma:
        gemma_checks(results)
    print(json.dumps(results))
    return 0 if all(v == "ok" or not str(v).startswith("FAIL") for v in results.values()) else 1


def _release_source() -> Path:
    import build_lib

    return build_lib.ensure_source()


if __name__ == "__main__":
    raise SystemExit(main())
