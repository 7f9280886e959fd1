"""Completion requests and their OpenAI `text_completion` shape: validation up front, chunks, logprobs.

`prepare()` turns `create_completion`'s keywords into a validated `CompletionRequest` (tokens, sampling
parameters, stops) before anything runs, so a bad request fails at the call, also when streaming.
`stream_chunks()` runs it through `Llama._generate` and shapes the chunks (stop strings never appear,
multi-byte characters are never split); `collect()` merges them into one response.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llamarcp._backend import get_lib
from llamarcp.errors import PromptTooLongError
from llamarcp.multimodal import MediaPrompt
from llamarcp.sampling import (
    LLAMA_DEFAULT_SEED as RANDOM_SEED,
)
from llamarcp.sampling import (
    SamplingParams,
    as_logits_processor,
    as_stopping_criteria,
    grammar_sampler,
)
from llamarcp.tokenizer import TextStream
from llamarcp.validate.params import check_int, check_logit_bias, check_prompt, check_stop

if TYPE_CHECKING:
    from llamarcp.engine import Outcome, Step
    from llamarcp.llama import Llama

__all__ = [
    "CompletionRequest",
    "PromptType",
    "choices",
    "collect",
    "collect_choices",
    "complete_all",
    "prepare",
    "prompt_tokens",
    "start",
    "stream_choices",
    "stream_chunks",
]

PromptType = str | bytes | Sequence[int]
#: The most choices (`n`) one completion request may ask for.
MAX_CHOICES = 16


@dataclass
class CompletionRequest:
    """One validated completion: what to evaluate, how to sample, and how to shape the answer."""

    prompt_tokens: list[int]
    max_tokens: int
    params: SamplingParams
    stop: list[str]
    echo: bool
    logprobs: int | None
    model_name: str
    logits_processor: Any = None
    stopping_criteria: Any = None


def prompt_tokens(llm: Llama, prompt: PromptType) -> list[int]:
    """Text (tokenized with BOS and special tokens) or token ids (checked against the vocab); never empty."""
    model = llm._model
    if isinstance(prompt, MediaPrompt):  # text tokens and media placeholders (llamarcp.multimodal)
        return prompt
    if isinstance(prompt, (str, bytes, bytearray)):
        tokens = llm.tokenize(bytes(prompt) if isinstance(prompt, bytearray) else prompt, add_bos=True, special=True)
    else:
        tokens = [int(t) for t in prompt]
        model.check_tokens(tokens)
    if not tokens:
        bos = model.token_bos()
        if bos < 0:
            raise ValueError("the prompt is empty and the vocab has no BOS token to start from")
        tokens = [bos]
    return tokens


def infill_tokens(llm: Llama, prompt: PromptType, suffix: str) -> list[int]:
    """Fill-in-the-middle: the model's FIM tokens around prefix and suffix, as llama.cpp's infill arranges them
    (`<PRE>prefix<SUF>suffix<MID>`, or suffix first with `Llama(spm_infill=True)`); the completion is the middle."""
    model = llm._model
    lib = get_lib()
    pre, suf, mid = (
        int(f(model.vocab)) for f in (lib.llama_vocab_fim_pre, lib.llama_vocab_fim_suf, lib.llama_vocab_fim_mid)
    )
    if min(pre, suf, mid) < 0:
        raise ValueError("suffix= (fill-in-the-middle) needs a model with FIM tokens; this model has none")
    if not isinstance(suffix, str) or not isinstance(prompt, (str, bytes)):
        raise TypeError("fill-in-the-middle takes the prompt and the suffix as text")
    head = model.tokenize(prompt, add_special=False, parse_special=False)
    tail = model.tokenize(suffix, add_special=False, parse_special=False)
    bos = [model.token_bos()] if model.add_bos() and model.token_bos() >= 0 else []
    if llm.spm_infill:
        return [*bos, suf, *tail, pre, *head, mid]
    return [*bos, pre, *head, suf, *tail, mid]


def prepare(
    llm: Llama,
    prompt: PromptType,
    *,
    suffix: str | None = None,
    max_tokens: int | None = 16,
    temperature: float = 0.8,
    top_p: float = 0.95,
    min_p: float = 0.05,
    typical_p: float = 1.0,
    logprobs: int | None = None,
    echo: bool = False,
    stop: str | Sequence[str] | None = None,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    repeat_penalty: float = 1.0,
    top_k: int = 40,
    seed: int | None = None,
    mirostat_mode: int = 0,
    mirostat_tau: float = 5.0,
    mirostat_eta: float = 0.1,
    model: str | None = None,
    grammar: Any = None,
    logit_bias: Mapping[Any, float] | None = None,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
) -> CompletionRequest:
    """Validate everything and tokenize the prompt; raises before any decoding starts."""
    n_ctx = llm._engine_or_raise().n_ctx
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
        raise ValueError(
            f"max_tokens must be an int or None (None, 0 or less: until the context is full), got {max_tokens!r}"
        )
    if max_tokens is not None and max_tokens <= 0:
        max_tokens = None  # llama-cpp-python: 0 or -1 mean "until the context is full"
    if logprobs is not None:
        check_int("logprobs", logprobs, 0, 2**31 - 1)
    stops = check_stop(stop)
    prompt = prompt if isinstance(prompt, MediaPrompt) else check_prompt(prompt)  # its ids are the projector's
    tokens = infill_tokens(llm, prompt, suffix) if suffix is not None else prompt_tokens(llm, prompt)
    if isinstance(tokens, MediaPrompt) and echo:
        raise ValueError("echo=True is not available for a prompt with images or audio")
    if len(tokens) >= n_ctx:
        raise PromptTooLongError(len(tokens), n_ctx)
    bias = check_logit_bias(logit_bias)
    params = llm._sampling_params(
        seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        repeat_penalty=repeat_penalty,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        grammar=grammar,
        logit_bias=bias,
        mirostat_mode=mirostat_mode,
        mirostat_tau=mirostat_tau,
        mirostat_eta=mirostat_eta,
    )
    if grammar is not None:  # parse now so a bad grammar fails at the call, also when streaming
        grammar_sampler(llm._model, grammar).close()
    return CompletionRequest(
        prompt_tokens=tokens,
        max_tokens=max_tokens if max_tokens is not None else n_ctx - len(tokens),
        params=params,
        stop=stops,
        echo=echo,
        logprobs=logprobs,
        model_name=model or llm.model_path,
        logits_processor=as_logits_processor(logits_processor),
        stopping_criteria=as_stopping_criteria(stopping_criteria),
    )


def stream_chunks(
    llm: Llama,
    request: CompletionRequest,
    index: int = 0,
    steps: Iterator[Step] | None = None,
    outcome: Outcome | None = None,
    completion_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The completion as OpenAI `text_completion` chunks of choice `index`; the last one carries finish_reason
    and usage. `steps`/`outcome` come from an already started `Llama._generate` (several choices at once)."""
    completion_id = completion_id or f"cmpl-{uuid.uuid4()}"
    created = int(time.time())
    text_stream = TextStream(request.stop)
    outcome = {} if outcome is None else outcome
    offset = 0
    pending_lp: list[dict[str, Any]] = []
    with_logprobs = request.logprobs is not None

    def chunk(text: str, finish_reason: str | None, lps: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": request.model_name,
            "choices": [
                {
                    "text": text,
                    "index": index,
                    "logprobs": format_logprobs(llm, lps, offset) if lps is not None else None,
                    "finish_reason": finish_reason,
                }
            ],
        }

    echo_logprobs = request.echo and with_logprobs
    generator = steps if steps is not None else start(llm, request, outcome, echo_logprobs)
    first: list[Step] = []
    if echo_logprobs:  # the prompt's logprobs are computed when the generation starts: take its first step now
        first.extend(itertools.islice(generator, 1))
    if request.echo:
        echo_text = llm.detokenize(request.prompt_tokens).decode("utf-8", errors="replace")
        prompt_infos = outcome.get("prompt_logprobs", [])
        infos = [
            {"token": t, "logprob": None, "top": None} if info is None else info
            for t, info in zip(request.prompt_tokens, prompt_infos)
        ]
        yield chunk(echo_text, None, infos if with_logprobs else None)
        offset += len(echo_text)
    generator = itertools.chain(first, generator) if first else generator
    try:
        for _token, piece, info in generator:
            if info is not None:
                pending_lp.append(info)
            text = text_stream.push(piece)
            if text_stream.stopped:
                if text:
                    yield chunk(text, None, pending_lp if with_logprobs else None)
                break
            if text:
                yield chunk(text, None, pending_lp if with_logprobs else None)
                offset += len(text)
                pending_lp = []
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    finish_reason = "stop" if text_stream.stopped else outcome.get("finish_reason", "length")
    n_completion = int(outcome.get("timings", {}).get("predicted_n", 0))
    tail = text_stream.finish()
    if tail:
        yield chunk(tail, None, pending_lp if with_logprobs else None)
    final = chunk("", finish_reason, None)
    n_prompt = len(request.prompt_tokens)
    final["usage"] = {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_completion,
        "total_tokens": n_prompt + n_completion,
    }
    yield final


def start(
    llm: Llama, request: CompletionRequest, outcome: Outcome, prompt_logprobs: bool = False
) -> Generator[Step, None, None]:
    """Begin generating (with `n_parallel > 1` the request joins the shared decode loop now)."""
    return llm._generate(
        request.prompt_tokens,
        request.params,
        request.max_tokens,
        request.logprobs,
        request.logits_processor,
        request.stopping_criteria,
        outcome,
        request.logprobs if prompt_logprobs else None,
    )


def choices(request: CompletionRequest, n: int) -> list[CompletionRequest]:
    """`n` copies of a request, each sampling with its own seed (seed + i) unless the seed is random."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise ValueError(f"n must be an int in 1..{MAX_CHOICES}, got {n!r}")
    seed = request.params.seed
    return [
        replace(request, params=replace(request.params, seed=seed if seed == RANDOM_SEED else (seed + i) & 0xFFFFFFFF))
        for i in range(n)
    ]


def stream_choices(llm: Llama, requests: list[CompletionRequest]) -> Iterator[dict[str, Any]]:
    """Several choices of one prompt: all are started at once, their chunks follow choice by choice."""
    completion_id = f"cmpl-{uuid.uuid4()}"
    outcomes: list[Outcome] = [{} for _ in requests]
    started = [start(llm, r, o, r.echo and r.logprobs is not None) for r, o in zip(requests, outcomes)]
    try:
        for i, (request, steps, outcome) in enumerate(zip(requests, started, outcomes)):
            yield from stream_chunks(llm, request, i, steps, outcome, completion_id)
    finally:
        for steps in started:
            close = getattr(steps, "close", None)
            if close is not None:
                close()


def collect_choices(requests: list[CompletionRequest], chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The chunks of `stream_choices` merged into one response with a choice per request."""
    per_choice: dict[int, list[dict[str, Any]]] = {}
    for part in chunks:
        per_choice.setdefault(part["choices"][0]["index"], []).append(part)
    merged = [collect(requests[i], iter(parts)) for i, parts in sorted(per_choice.items())]
    first = merged[0]
    for i, response in enumerate(merged):
        response["choices"][0]["index"] = i
    completion_tokens = sum(r["usage"]["completion_tokens"] for r in merged)
    n_prompt = first["usage"]["prompt_tokens"]
    return {
        **{k: first[k] for k in ("id", "object", "created", "model")},
        "choices": [r["choices"][0] for r in merged],
        "usage": {
            "prompt_tokens": n_prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": n_prompt + completion_tokens,
        },
    }


def complete_all(llm: Llama, prompts: Sequence[PromptType], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """`Llama.create_completions`: prepare every prompt, start them all, collect each in order."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError("create_completions takes a list of prompts; use create_completion for one")
    if kwargs.get("stream"):
        raise ValueError("create_completions does not stream; call create_completion(stream=True) per prompt")
    options = {k: v for k, v in kwargs.items() if k not in ("stream", "tfs_z")}
    requests = [prepare(llm, prompt, **options) for prompt in prompts]
    outcomes: list[Outcome] = [{} for _ in requests]
    started = [start(llm, r, o, r.echo and r.logprobs is not None) for r, o in zip(requests, outcomes)]
    try:
        return [
            collect(r, stream_chunks(llm, r, 0, steps, outcome))
            for r, steps, outcome in zip(requests, started, outcomes)
        ]
    finally:
        for steps in started:
            steps.close()


def format_logprobs(llm: Llama, infos: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """OpenAI's completion logprobs object for the tokens in `infos`, text offsets counted from `offset`."""
    piece = llm._model.token_to_piece
    tokens, offsets, token_lps, tops = [], [], [], []
    for info in infos:
        text = piece(info["token"]).decode("utf-8", errors="replace")
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_lps.append(info["logprob"])
        top = info["top"]
        tops.append(None if top is None else {piece(t).decode("utf-8", errors="replace"): lp for t, lp in top.items()})
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_lps, "top_logprobs": tops}


def collect(request: CompletionRequest, chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """All chunks of one completion merged into the non-streamed response."""
    texts: list[str] = []
    merged: dict[str, list[Any]] | None = None if request.logprobs is None else {}
    last: dict[str, Any] = {}
    for part in chunks:
        choice = part["choices"][0]
        texts.append(choice["text"])
        lps = choice["logprobs"]
        if merged is not None and lps is not None:
            for key, values in lps.items():
                merged.setdefault(key, []).extend(values)
        last = part
    choice = last["choices"][0]
    return {
        "id": last["id"],
        "object": "text_completion",
        "created": last["created"],
        "model": last["model"],
        "choices": [
            {
                "text": "".join(texts),
                "index": choice["index"],
                "logprobs": merged,
                "finish_reason": choice["finish_reason"],
            }
        ],
        "usage": last["usage"],
    }
