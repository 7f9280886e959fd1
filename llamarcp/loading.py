"""From `Llama`'s keywords to loaded llama.cpp objects: the model, its context (inside an Engine), adapters.

The keywords arrive as the dict `Llama.__init__` recorded (`_init_args`, llama-cpp-python's names), so this
module is the one place that knows which keyword becomes which `llama_model_params` / `llama_context_params`
field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llamarcp._backend import capture_log, get_lib
from llamarcp._core import LoraAdapter, Model, ffi
from llamarcp.engine import Engine, context_params
from llamarcp.errors import LoraAdapterError

if TYPE_CHECKING:
    from llamarcp.llama import Llama

__all__ = ["CONTEXT_FIELDS", "apply_lora", "open_engine", "open_model"]

#: Constructor keywords that are `llama_context_params` fields of the same name (None: llama.cpp's default).
CONTEXT_FIELDS = (  # drift: fields llama_context_params
    "pooling_type",
    "rope_freq_base",
    "rope_freq_scale",
    "offload_kqv",
    "no_perf",
    "rope_scaling_type",
    "attention_type",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
    "op_offload",
    "swa_full",
    "type_k",
    "type_v",
)


def open_model(args: dict[str, Any]) -> Model:
    """Load the GGUF (`args["model_path"]`, already resolved) with the model keywords; RPC devices if asked."""
    devices = None
    if args["rpc_servers"] is not None and not args["vocab_only"]:  # "host:port,..." like llama-cli --rpc
        from llamarcp import rpc

        devices = rpc.rpc_devices(args["rpc_servers"])
        rpc.warn_if_unused(args["n_gpu_layers"])
    return Model(
        args["model_path"],
        devices=devices,
        tensor_split=args["tensor_split"],
        vocab_only=args["vocab_only"],
        n_gpu_layers=args["n_gpu_layers"],
        main_gpu=args["main_gpu"],
        split_mode=args["split_mode"],
        use_mmap=args["use_mmap"],
        use_mlock=args["use_mlock"],
        check_tensors=args["check_tensors"],
        use_extra_bufts=args["use_extra_bufts"],
        kv_overrides=args["kv_overrides"],
    )


def open_engine(model: Model, args: dict[str, Any], llm: Llama, is_closing: Callable[[], bool]) -> Engine:
    """The context for `llm`'s keywords. With `n_parallel` > 1 it holds that many sequences of `n_ctx` each."""
    n_parallel = args["n_parallel"]
    n_ctx = args["n_ctx"]
    n_ctx_seq = n_ctx or model.n_ctx_train()
    params = context_params(
        n_ctx=n_ctx_seq * n_parallel if n_parallel > 1 else n_ctx,
        n_batch=args["n_batch"],
        n_ubatch=args["n_ubatch"],
        n_threads=llm.n_threads,
        n_threads_batch=llm.n_threads_batch,
        n_seq_max=n_parallel if n_parallel > 1 else args["n_seq_max"],
        embedding=llm.embedding,
        flash_attn=args["flash_attn"],
        **{name: args[name] for name in CONTEXT_FIELDS},
    )
    return Engine(model, params, is_closing=is_closing, n_ctx_seq=n_ctx_seq if n_parallel > 1 else None)


def apply_lora(model: Model, engine: Engine, path: str | os.PathLike[str], scale: float) -> LoraAdapter:
    """Load a LoRA adapter for `model` and apply it to the context with `scale`."""
    adapter = LoraAdapter(model, path)
    adapters = ffi.new("struct llama_adapter_lora *[1]", [adapter.ptr])
    scales = ffi.new("float[1]", [float(scale)])
    with capture_log() as log:
        rc = get_lib().llama_set_adapters_lora(engine.ctx.ptr, adapters, 1, scales)
    if rc != 0:
        raise LoraAdapterError(f"llama_set_adapters_lora failed ({rc}) for {path}{log.reason()}")
    return adapter
