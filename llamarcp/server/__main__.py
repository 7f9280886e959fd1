"""`python -m llamarcp.server --model PATH --host 127.0.0.1 --port 8080`: serve GGUF models over OpenAI's API.

Takes llama.cpp-style flags (`-c 4096`, `--chat-format chatml`) and llama-cpp-python's server names
(`--n_ctx 4096`, `--chat_format chatml`, `--config_file models.yaml`, environment variables like `N_CTX`).
Precedence: command line, then config file, then environment, then defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from llamarcp.server import compat
from llamarcp.server.settings import ModelConfig, ServerSettings

#: llamarcp flag dest -> (the llama-cpp-python name it sets, the flag as the user spells it in messages).
_SAME_SETTING = {
    "model_alias": ("model_alias", "--alias"),
    "api_key": ("api_key", "--api-key"),
    "n_ctx": ("n_ctx", "--ctx-size"),
    "n_batch": ("n_batch", "--batch-size"),
    "n_threads": ("n_threads", "--threads"),
    "n_gpu_layers": ("n_gpu_layers", "--n-gpu-layers"),
    "rpc_servers": ("rpc_servers", "--rpc"),
    "chat_format": ("chat_format", "--chat-format"),
    "mmproj": ("clip_model_path", "--mmproj"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llamarcp.server", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    p.add_argument("-m", "--model", help="GGUF file to serve (default: the `model` extra's gemma-3-270m)")
    p.add_argument("-a", "--alias", dest="model_alias", help="model id clients use (default: the file name)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $LLAMARCP_API_KEY or $API_KEY)")
    p.add_argument(
        "-c", "--ctx-size", dest="n_ctx", type=int, help="context size of each sequence (default 2048; see --parallel)"
    )
    p.add_argument(
        "-np",
        "--parallel",
        dest="n_parallel",
        type=int,
        help="generations per model decoded together in shared steps, continuous batching (default 4); the KV "
        "cache holds parallel x ctx-size tokens; 1 = one request at a time",
    )
    p.add_argument("-b", "--batch-size", dest="n_batch", type=int, help="batch size (default 512)")
    p.add_argument("-t", "--threads", dest="n_threads", type=int, help="threads (default: physical cores)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, help="layers to offload (default 0)")
    p.add_argument("--rpc", dest="rpc_servers", metavar="SERVERS", help="comma-separated RPC servers (host:port)")
    p.add_argument("--seed", type=int, help="default sampling seed")
    p.add_argument("--chat-format", help="named chat format instead of the model's template (e.g. chatml)")
    p.add_argument("--chat-template-file", help="jinja chat template to use instead of the model's own")
    p.add_argument("--mmproj", help="multimodal projector GGUF for the model: chat messages may hold images")
    p.add_argument("--max-queue", type=int, help="requests per model running or waiting before 503 (default 16)")
    p.add_argument(
        "--max-loaded-models",
        type=int,
        help="models loaded at once with --config_file; the least recently used idle one is evicted (default 1)",
    )
    p.add_argument(
        "--strict-model-names",
        action="store_true",
        default=None,
        help="404 for a model name the server does not serve (default: any name gets the default model)",
    )
    p.add_argument(
        "--n-predict", type=int, help="most tokens one request generates, also when max_tokens is null (default: n_ctx)"
    )
    p.add_argument(
        "--timeout-keep-alive",
        type=float,
        help="seconds a connection may sit without sending a complete request before it is closed (default 5)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, help="largest request body, declared or streamed (default 8 MiB; else 413)"
    )
    p.add_argument(
        "--metrics", action="store_true", default=None, help="serve Prometheus metrics at /metrics (default: off)"
    )
    p.add_argument(
        "--slots",
        dest="endpoint_slots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the slots' state at GET /slots (default: on; --no-slots turns it off)",
    )
    p.add_argument(
        "--slot-save-path",
        metavar="DIR",
        help="directory where POST /slots/ID?action=save|restore keeps slot files (default: slot saving off)",
    )
    p.add_argument(
        "--reranking",
        "--rerank",
        action="store_true",
        default=None,
        help="serve a reranker (cross-encoder) model: embeddings with rank pooling, for /v1/rerank",
    )
    p.add_argument(
        "-kvu",
        "--kv-unified",
        action="store_true",
        default=None,
        help="the --parallel slots share one KV cache of --ctx-size cells (each slot up to --ctx-size; llama-server's "
        "memory for -np N -c C) instead of N x ctx-size; when it is full, idle prefix caches go first",
    )
    p.add_argument(
        "--swa-full",
        action="store_true",
        default=None,
        help="full-size KV cache for sliding-window layers (gemma 2/3...). Default, as llama-server: those layers "
        "keep only their window (less memory; a prefix the window has left is decoded again); kept full anyway "
        "while speculative decoding rolls back rejected drafts",
    )
    p.add_argument(
        "--spec-type",
        choices=["ngram-simple", "draft-simple"],
        help="speculative decoding of greedy requests: ngram-simple drafts from the prompt and the answer so far "
        "(prompt lookup), draft-simple from the --model-draft model (implied by --model-draft); the draft length "
        "adapts to how many drafts are accepted (default: off)",
    )
    p.add_argument(
        "--spec-draft-n-max",
        "--draft-max",
        "--draft-n",
        "--draft",
        type=int,
        metavar="N",
        help="most draft tokens per step (default 10 for ngram-simple, 8 for a draft model; 1..256)",
    )
    p.add_argument(
        "--spec-draft-n-min",
        "--draft-min",
        "--draft-n-min",
        type=int,
        metavar="N",
        help="a proposal shorter than N tokens is not tried (default 0)",
    )
    p.add_argument(
        "--spec-ngram-simple-size-n", type=int, metavar="N", help="longest n-gram looked up (default 2; 1..16)"
    )
    p.add_argument(
        "--spec-draft-model",
        "-md",
        "--model-draft",
        dest="model_draft",
        metavar="FNAME",
        help="draft model for speculative decoding: a small GGUF with the same vocab as the model (checked at load)",
    )
    p.add_argument(
        "--spec-draft-threads",
        "-td",
        "--threads-draft",
        dest="threads_draft",
        type=int,
        metavar="N",
        help="threads of the draft model (default: same as --threads)",
    )
    p.add_argument(
        "--spec-draft-ngl",
        "-ngld",
        "--gpu-layers-draft",
        "--n-gpu-layers-draft",
        dest="gpu_layers_draft",
        type=int,
        metavar="N",
        help="draft model layers to offload to the GPU (default 0)",
    )
    p.add_argument(
        "--lora",
        action="append",
        metavar="FNAME",
        help="LoRA adapter to load for hot swapping (repeatable; ids 0, 1, ... in order; scale 1)",
    )
    p.add_argument(
        "--lora-scaled",
        action="append",
        nargs=2,
        metavar=("FNAME", "SCALE"),
        help="LoRA adapter with its default scale (repeatable; ids follow the --lora ones)",
    )
    p.add_argument(
        "--lora-init-without-apply",
        action="store_true",
        help="load the LoRA adapters with scale 0 (set scales later with POST /lora-adapters or per request)",
    )
    p.add_argument("--no-embeddings", dest="embeddings", action="store_false", help="disable /v1/embeddings")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "-v",
        "--verbose",
        nargs="?",
        const=True,
        type=compat.parse_bool,
        metavar="BOOL",
        help="show llama.cpp's own log (llama-cpp-python's `--verbose true|false` works too)",
    )
    compat.add_arguments(p)
    return p


class UsageError(Exception):
    """A command line or configuration the server cannot start from (exit status 2)."""


def _command_line_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting given on the command line, under llama-cpp-python's names; a conflicting pair is an error."""
    given = compat.from_args(args)
    for dest, (name, flag) in _SAME_SETTING.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if name in given and given[name] != value:
            raise UsageError(f"{flag} {value} and --{name} {given[name]} set the same thing; give only one")
        given[name] = value
    for name in compat.SHARED_FLAGS:
        value = getattr(args, name)
        if value is not None:
            given[name] = value
    return given


def _speculative_flags(args: argparse.Namespace, configs: list[Any], has_config_file: bool) -> None:
    """--spec-type / --model-draft and their sizes -> each config's `draft_model` (llama-server's names)."""
    spec_type = args.spec_type or ("draft-simple" if args.model_draft else None)
    sizes = (args.spec_draft_n_max, args.spec_draft_n_min, args.spec_ngram_simple_size_n)
    draft_only = (args.threads_draft, args.gpu_layers_draft)
    if spec_type is None:
        if any(v is not None for v in (*sizes, *draft_only)):
            raise UsageError("--spec-draft-n-max / --spec-draft-n-min / --spec-ngram-simple-size-n need --spec-type")
        return
    if any("draft_model" in config.llama_kwargs for config in configs):
        raise UsageError("--spec-type / --model-draft and llama-cpp-python's draft_model set the same thing; give one")
    n_max = args.spec_draft_n_max if args.spec_draft_n_max is not None else (10 if spec_type == "ngram-simple" else 8)
    n_min = args.spec_draft_n_min if args.spec_draft_n_min is not None else 0
    if not 1 <= n_max <= 256:
        raise UsageError(f"--spec-draft-n-max must be in 1..256, got {n_max}")
    if not 0 <= n_min <= n_max:
        raise UsageError(f"--spec-draft-n-min must be in 0..--spec-draft-n-max ({n_max}), got {n_min}")
    if spec_type == "ngram-simple":
        if args.model_draft or any(v is not None for v in draft_only):
            raise UsageError("--model-draft / --spec-draft-threads / --spec-draft-ngl need --spec-type draft-simple")
        size_n = 2 if args.spec_ngram_simple_size_n is None else args.spec_ngram_simple_size_n
        if not 1 <= size_n <= 16:
            raise UsageError(f"--spec-ngram-simple-size-n must be in 1..16, got {size_n}")
        from llamarcp.compat.speculative import LlamaPromptLookupDecoding

        for config in configs:
            lookup = LlamaPromptLookupDecoding(size_n, n_max)
            lookup.min_pred_tokens = n_min  # type: ignore[attr-defined]  # read by the engines (llamarcp.ngram_draft)
            config.llama_kwargs["draft_model"] = lookup
        return
    if not args.model_draft:
        raise UsageError("--spec-type draft-simple needs --model-draft FNAME")
    if args.spec_ngram_simple_size_n is not None:
        raise UsageError("--spec-ngram-simple-size-n is for --spec-type ngram-simple")
    if has_config_file:
        raise UsageError("--model-draft serves one model; not with --config_file")
    if args.threads_draft is not None and not 1 <= args.threads_draft <= 1024:
        raise UsageError(f"--spec-draft-threads must be in 1..1024, got {args.threads_draft}")
    if args.gpu_layers_draft is not None and args.gpu_layers_draft < -1:
        raise UsageError(f"--spec-draft-ngl must be >= -1, got {args.gpu_layers_draft}")
    from llamarcp._core import Model
    from llamarcp.draft_model import DraftModel, check_compatible
    from llamarcp.errors import LlamaError
    from llamarcp.models import default_model_path

    draft = None
    try:
        draft = DraftModel(
            args.model_draft,
            num_pred_tokens=n_max,
            min_pred_tokens=n_min,
            n_threads=args.threads_draft,
            n_gpu_layers=args.gpu_layers_draft or 0,
        )
        target = configs[0].model or default_model_path()
        if os.path.isfile(target):  # a missing target is reported when it loads, under its own flag
            target_vocab = Model(target, vocab_only=True)
            try:
                check_compatible(target_vocab, draft.model)  # refused at startup, before the model loads
            finally:
                target_vocab.close()
    except (LlamaError, OSError) as exc:
        if draft is not None:
            draft.close()
        raise UsageError(f"--model-draft {args.model_draft}: {exc}") from None
    configs[0].llama_kwargs["draft_model"] = draft


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> tuple[ServerSettings, dict[str, Any]]:
    """ServerSettings and the listener's options (host, port, TLS, keep-alive) from parsed flags + environment."""
    environ = dict(os.environ) if environ is None else environ
    cli = _command_line_settings(args)
    env = compat.from_environment(environ)
    if "api_key" not in env and environ.get("LLAMARCP_API_KEY"):
        env["api_key"] = environ["LLAMARCP_API_KEY"]
    config_file = args.config_file or environ.get("CONFIG_FILE") or environ.get("config_file")
    server_values: dict[str, Any]
    if config_file:
        model_flags = sorted(n for n in cli if n in compat.MODEL_FIELDS and n != "verbose")
        if model_flags:
            names = ", ".join(f"--{n}" for n in model_flags)
            raise UsageError(f"{names} cannot be combined with --config_file: set them per model in the file")
        if args.chat_template_file:
            raise UsageError("--chat-template-file serves one model; not with --config_file")
        file_server, file_models = compat.read_config_file(config_file)
        env_server = {k: v for k, v in env.items() if k in compat.SERVER_FIELDS}
        server_values = {**env_server, **file_server, **{k: v for k, v in cli.items() if k not in compat.MODEL_FIELDS}}
        configs = [compat.model_config(values, f"{config_file}, models[{i}]") for i, values in enumerate(file_models)]
        if "verbose" in cli:
            for config in configs:
                config.verbose = cli["verbose"]
    else:
        values = {**env, **cli}
        server_values = {k: v for k, v in values.items() if k in compat.SERVER_FIELDS}
        configs = [compat.model_config({k: v for k, v in values.items() if k in compat.MODEL_FIELDS})]
        if args.chat_template_file:
            try:
                with open(args.chat_template_file, encoding="utf-8") as f:
                    configs[0].chat_template = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read --chat-template-file: {exc}") from None
    if args.embeddings is False:
        for config in configs:
            config.embeddings = False
    adapters = _lora_flags(args)
    if adapters:
        if config_file:
            raise UsageError("--lora/--lora-scaled serve one model; not with --config_file")
        configs[0].lora_adapters = adapters
    _speculative_flags(args, configs, bool(config_file))
    if args.kv_unified:
        for config in configs:
            config.llama_kwargs["kv_unified"] = True
    if args.reranking:  # llama-server's --reranking: embedding contexts with rank pooling
        from llamarcp._ffi import ffi

        for config in configs:
            config.llama_kwargs.update(embedding=True, pooling_type=ffi.integer_const("LLAMA_POOLING_TYPE_RANK"))
    if args.n_parallel is not None:  # a server-wide choice, also for the models of a config file
        for config in configs:
            config.n_parallel = args.n_parallel
    for config in configs:  # llama-server's KV memory: windowed layers keep their window only (see --swa-full)
        drafting = config.llama_kwargs.get("draft_model") is not None
        config.llama_kwargs.setdefault("swa_full", bool(args.swa_full) or drafting)

    def pick(flag_value: Any, name: str, default: Any) -> Any:
        return flag_value if flag_value is not None else server_values.get(name, default)

    for name in ("max_queue", "max_loaded_models", "strict_model_names", "n_predict"):  # llamarcp's own flags win
        if getattr(args, name) is not None:
            server_values[name] = getattr(args, name)
    settings = compat.server_settings(server_values, configs)
    if args.max_body_bytes is not None:
        settings.max_body_bytes = args.max_body_bytes
    for name in ("metrics", "endpoint_slots", "slot_save_path"):  # llama-server's flags, llamarcp's settings
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    try:
        settings.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    listener = {
        "host": server_values.get("host", "127.0.0.1"),
        "port": server_values.get("port", 8080),
        "ssl_keyfile": server_values.get("ssl_keyfile"),
        "ssl_certfile": server_values.get("ssl_certfile"),
        "timeout_keep_alive": pick(args.timeout_keep_alive, "timeout_keep_alive", 5.0),
    }
    return settings, listener


def _lora_flags(args: argparse.Namespace) -> list[tuple[str, float]]:
    from llamarcp.lora import check_scale

    adapters = [(path, 1.0) for path in args.lora or []]
    for path, scale in args.lora_scaled or []:
        try:
            adapters.append((path, check_scale(float(scale))))
        except ValueError as exc:
            raise UsageError(f"--lora-scaled {path} {scale}: {exc}") from None
    if args.lora_init_without_apply:
        adapters = [(path, 0.0) for path, _ in adapters]
    return adapters


def _describe(configs: list[ModelConfig]) -> str:
    return ", ".join(c.alias or c.model or "default" for c in configs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, listener = resolve(args)
    except (UsageError, compat.CompatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from llamarcp.server.app import create_app
        from llamarcp.server.connections import IdleTimeoutH11Protocol
    except ImportError as exc:
        print(f"error: the server needs its extra: pip install 'llamarcp[server]' ({exc})", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    verbose = any(c.verbose for c in settings.model_configs())
    if not verbose:  # llama.cpp's own log is routed to this logger; keep it to warnings unless asked
        logging.getLogger("llamarcp.llama_cpp").setLevel(logging.WARNING)
    log = logging.getLogger("llamarcp.server")
    log.debug("models: %s", _describe(settings.model_configs()))
    if settings.api_key is None and listener["host"] not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", listener["host"]
        )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=listener["host"],
        port=listener["port"],
        ssl_keyfile=listener["ssl_keyfile"],
        ssl_certfile=listener["ssl_certfile"],
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=listener["timeout_keep_alive"],
        root_path=settings.root_path,
        http=IdleTimeoutH11Protocol,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
