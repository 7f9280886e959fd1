"""`python -m llamarcp.server --model PATH --host 127.0.0.1 --port 8080`: serve one GGUF over OpenAI's API."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from llamarcp.server.app import ServerSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llamarcp.server", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", help="GGUF file to serve (default: the `model` extra's gemma-3-270m)")
    p.add_argument("-a", "--alias", dest="model_alias", help="model id clients use (default: the file name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("LLAMARCP_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $LLAMARCP_API_KEY)",
    )
    p.add_argument("-c", "--ctx-size", dest="n_ctx", type=int, default=2048, help="context size (default 2048)")
    p.add_argument("-b", "--batch-size", dest="n_batch", type=int, default=512, help="batch size (default 512)")
    p.add_argument("-t", "--threads", dest="n_threads", type=int, help="threads (default: physical cores)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=0, help="layers to offload")
    p.add_argument("--rpc", dest="rpc_servers", metavar="SERVERS", help="comma-separated RPC servers (host:port)")
    p.add_argument("--seed", type=int, help="default sampling seed")
    p.add_argument("--chat-format", help="named chat format instead of the model's template (e.g. chatml)")
    p.add_argument("--chat-template-file", help="jinja chat template to use instead of the model's own")
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests running or waiting before new ones get 503 (default 16)"
    )
    p.add_argument("--no-embeddings", dest="embeddings", action="store_false", help="disable /v1/embeddings")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's own log")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_queue < 1:
        print("error: --max-queue must be at least 1", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from llamarcp.server.app import create_app
    except ImportError as exc:
        print(f"error: the server needs its extra: pip install 'llamarcp[server]' ({exc})", file=sys.stderr)
        return 2
    chat_template = None
    if args.chat_template_file:
        try:
            with open(args.chat_template_file, encoding="utf-8") as f:
                chat_template = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read --chat-template-file: {exc}", file=sys.stderr)
            return 2
    settings = ServerSettings(
        model=args.model,
        model_alias=args.model_alias,
        api_key=args.api_key,
        n_ctx=args.n_ctx,
        n_batch=args.n_batch,
        n_threads=args.n_threads,
        n_gpu_layers=args.n_gpu_layers,
        rpc_servers=args.rpc_servers,
        seed=args.seed,
        chat_format=args.chat_format,
        chat_template=chat_template,
        max_queue=args.max_queue,
        embeddings=args.embeddings,
        verbose=args.verbose,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # llama.cpp's own log is routed to this logger; keep it to warnings unless asked
        logging.getLogger("llamarcp.llama_cpp").setLevel(logging.WARNING)
    if args.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("llamarcp.server").warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", args.host
        )
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
