"""Routes that generate text: `/v1/completions` (and llama-cpp-python's Copilot alias) and `/v1/chat/completions`,
plain or streamed, with `n` choices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from llamarcp.chat import create_chat_completion
from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.errors import ApiError
from llamarcp.server.params import max_tokens_for, refuse_unknown_fields, sampling
from llamarcp.server.request_options import generate_in_slot, ignore_eos_bias, slot_options
from llamarcp.server.schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["add_generation_routes"]


def llama_server_sampling(body: CompletionRequest | ChatCompletionRequest, entry: Any) -> dict[str, Any]:
    """The request's sampling keywords, with llama-server's ignore_eos as a -inf bias on end-of-generation."""
    kwargs = sampling(body, entry)
    if body.ignore_eos:
        kwargs["logit_bias"] = {**(kwargs.get("logit_bias") or {}), **ignore_eos_bias(entry)}
    return kwargs


def add_generation_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool
    cap = dispatcher.settings.n_predict
    guarded: list[Any] = [Depends(require_key)]

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await complete(body, request, body.model)

    # llama-cpp-python's route for GitHub Copilot-style clients: the model aliased "copilot-codex".
    @app.post("/v1/engines/copilot-codex/completions", dependencies=guarded, include_in_schema=False)
    async def copilot_completions(body: CompletionRequest, request: Request) -> Any:
        return await complete(body, request, "copilot-codex")

    async def complete(body: CompletionRequest, request: Request, model: str | None) -> Any:
        refuse_unknown_fields(body)
        entry = pool.resolve(model)
        max_tokens = max_tokens_for(body.max_tokens, "max_tokens", cap)
        prompt: Any = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]

        slot = slot_options(body, entry)
        logprobs = body.logprobs if body.logprobs is not None or not body.n_probs else body.n_probs

        def kwargs() -> dict[str, Any]:
            return dict(
                llama_server_sampling(body, entry),
                max_tokens=max_tokens,
                logprobs=logprobs,
                echo=body.echo,
                suffix=body.suffix,
                model=entry.model_id,
                n=body.n,
            )

        result = await generate_in_slot(
            dispatcher,
            request,
            entry,
            slot,
            lambda **extra: entry.llama.create_completion(prompt, **extra, **kwargs()),
            stream=bool(body.stream),
        )
        return result if body.stream else JSONResponse(result)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        if body.max_completion_tokens is not None:
            max_tokens = max_tokens_for(body.max_completion_tokens, "max_completion_tokens", cap)
        else:
            max_tokens = max_tokens_for(body.max_tokens, "max_tokens", cap)
        response_format = (
            body.response_format.model_dump(by_alias=True, exclude_none=True) if body.response_format else None
        )
        config = entry.config
        template_kwargs = {**(config.chat_template_kwargs or {}), **(body.chat_template_kwargs or {})} or None
        slot = slot_options(body, entry)
        logprobs, top_logprobs = body.logprobs, body.top_logprobs
        if body.n_probs and not logprobs:  # llama-server's n_probs on the chat route: OpenAI's top logprobs
            logprobs, top_logprobs = True, body.n_probs

        def kwargs() -> dict[str, Any]:
            return dict(
                llama_server_sampling(body, entry),
                max_tokens=max_tokens,
                tools=body.tools,
                tool_choice=body.tool_choice,
                functions=body.functions,
                function_call=body.function_call,
                response_format=response_format,
                logprobs=logprobs,
                top_logprobs=top_logprobs,
                template_kwargs=template_kwargs,
                reasoning_format=body.reasoning_format,
                chat_format=config.chat_format,
                chat_template=config.chat_template,
                model=entry.model_id,
                n=body.n,
                allow_local_media=False,  # image_url parts: data URIs and http(s), never the server's own files
            )

        messages = body.messages
        result = await generate_in_slot(
            dispatcher,
            request,
            entry,
            slot,
            lambda **extra: create_chat_completion(entry.llama, messages, **extra, **kwargs()),
            stream=bool(body.stream),
        )
        return result if body.stream else JSONResponse(result)
