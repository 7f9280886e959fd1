"""llama-cpp-python's server settings, mapped onto llamarcp's in one place.

llama-cpp-python's server takes its `ServerSettings`/`ModelSettings` field names as `--name value` flags, as
environment variables (the name in any case: `N_CTX=4096`), and in a `--config_file` (JSON, or YAML for
`.yaml`/`.yml`) holding the server fields plus `models: [...]`. This module reads all three into plain dicts
keyed by those names and turns a dict into llamarcp's `ModelConfig` / server fields. Every name is either
honoured, accepted as a no-op (it only tunes something llamarcp does its own way; a warning says so), or
refused with a `CompatError` naming it (it would change results and llamarcp cannot do it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamarcp._ffi import ffi
from llamarcp.errors import LlamaError
from llamarcp.server.settings import ModelConfig, ServerSettings

__all__ = ["MODEL_FIELDS", "SERVER_FIELDS", "CompatError", "add_arguments", "model_config", "read_config_file"]

log = logging.getLogger("llamarcp.server")


class CompatError(LlamaError, ValueError):
    """A llama-cpp-python setting that is unknown, malformed, or not supported by llamarcp."""


def parse_bool(value: Any) -> bool:
    """llama-cpp-python's boolean spellings (1/0, true/false, yes/no, on/off, y/n, t/f)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "on", "t", "true", "y", "yes"):
        return True
    if text in ("0", "off", "f", "false", "n", "no"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _json_object(value: Any) -> dict[str, Any]:
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict):
        raise ValueError(f"not a JSON object: {value!r}")
    return parsed


def _json_list(item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def parse(value: Any) -> list[Any]:
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, list):
            raise ValueError(f"not a JSON list: {value!r}")
        return [item(v) for v in parsed]

    return parse


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"not a string: {value!r}")
    return str(value)


#: How a name is handled: "llama" = passed to Llama() under the same name, "model:<attr>" = a ModelConfig field,
#: "server:<attr>" = a server field, "draft" = the prompt-lookup draft model (read together), "noop" = accepted
#: (warned about when not at its default), "refuse" = an error unless left at its default.
@dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[Any], Any]
    target: str
    default: Any = None
    #: For the CLI: nargs="*" lists (llama-cpp-python's list fields take several values after one flag).
    many: bool = False
    why: str = ""


def _f(
    name: str, parse: Callable[[Any], Any], target: str, default: Any = None, many: bool = False, why: str = ""
) -> Field:
    return Field(name, parse, target, default, many, why)


MODEL_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        _f("model", _str, "model:model"),
        _f("model_alias", _str, "model:alias"),
        _f("n_gpu_layers", _int, "model:n_gpu_layers"),
        _f("split_mode", _int, "llama"),
        _f("main_gpu", _int, "llama"),
        _f("tensor_split", _json_list(_float), "llama", many=True),
        _f("vocab_only", parse_bool, "refuse", default=False, why="a vocab-only model cannot generate"),
        _f("use_mmap", parse_bool, "llama"),
        _f("use_mlock", parse_bool, "llama"),
        _f("kv_overrides", _json_list(_str), "refuse", many=True, why="GGUF metadata overrides are not supported"),
        _f("rpc_servers", _str, "model:rpc_servers"),
        _f("seed", _int, "model:seed"),
        _f("n_ctx", _int, "model:n_ctx"),
        _f("n_batch", _int, "model:n_batch"),
        _f("n_ubatch", _int, "llama"),
        _f("n_threads", _int, "model:n_threads"),
        _f("n_threads_batch", _int, "llama"),
        _f(
            "rope_scaling_type",
            _int,
            "refuse",
            # read from the generated bindings' declarations: no library load just to parse a command line
            default=ffi.integer_const("LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED"),
            why="only the model's own RoPE scaling is supported",
        ),
        _f("rope_freq_base", _float, "llama"),
        _f("rope_freq_scale", _float, "llama"),
        _f("yarn_ext_factor", _float, "refuse", default=-1.0, why="YaRN parameters are not supported"),
        _f("yarn_attn_factor", _float, "refuse", default=1.0, why="YaRN parameters are not supported"),
        _f("yarn_beta_fast", _float, "refuse", default=32.0, why="YaRN parameters are not supported"),
        _f("yarn_beta_slow", _float, "refuse", default=1.0, why="YaRN parameters are not supported"),
        _f("yarn_orig_ctx", _int, "refuse", default=0, why="YaRN parameters are not supported"),
        _f("mul_mat_q", parse_bool, "noop", default=True, why="llama.cpp picks its matmul kernels itself"),
        _f("logits_all", parse_bool, "noop", default=True, why="logits are kept for every token that needs them"),
        _f("embedding", parse_bool, "llama"),
        _f("offload_kqv", parse_bool, "llama"),
        _f("flash_attn", parse_bool, "llama"),
        _f("last_n_tokens_size", _int, "llama"),
        _f("lora_base", _str, "refuse", why="a separate LoRA base model is not supported"),
        _f("lora_path", _str, "llama"),
        _f("numa", parse_bool, "noop", default=False, why="NUMA placement is left to the OS"),
        _f("chat_format", _str, "model:chat_format"),
        _f("chat_template_kwargs", _json_object, "model:chat_template_kwargs"),
        _f("clip_model_path", _str, "model:mmproj"),
        _f("cache", parse_bool, "noop", default=False, why="the context always reuses the cached prompt prefix"),
        _f("cache_type", _str, "noop", default="ram", why="the context always reuses the cached prompt prefix"),
        _f("cache_size", _int, "noop", default=2 << 30, why="the context always reuses the cached prompt prefix"),
        _f("hf_tokenizer_config_path", _str, "refuse", why="HuggingFace tokenizers are not supported"),
        _f("hf_pretrained_model_name_or_path", _str, "refuse", why="HuggingFace tokenizers are not supported"),
        _f("hf_model_repo_id", _str, "refuse", why="downloading from the HuggingFace Hub is not supported"),
        _f("draft_model", _str, "draft"),
        _f("draft_model_num_pred_tokens", _int, "draft", default=10),
        _f("type_k", _int, "llama"),
        _f("type_v", _int, "llama"),
        _f("verbose", parse_bool, "model:verbose"),
    )
}

SERVER_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        _f("host", _str, "server:host"),
        _f("port", _int, "server:port"),
        _f("ssl_keyfile", _str, "server:ssl_keyfile"),
        _f("ssl_certfile", _str, "server:ssl_certfile"),
        _f("api_key", _str, "server:api_key"),
        _f("interrupt_requests", parse_bool, "server:interrupt_requests"),
        _f("disable_ping_events", parse_bool, "server:disable_ping_events"),
        _f("root_path", _str, "server:root_path"),
    )
}

#: llamarcp's own server settings a config file may also hold at its top level (beside llama-cpp-python's).
EXTRA_CONFIG_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        _f("max_queue", _int, "server:max_queue"),
        _f("max_loaded_models", _int, "server:max_loaded_models"),
        _f("strict_model_names", parse_bool, "server:strict_model_names"),
        _f("timeout_keep_alive", _float, "server:timeout_keep_alive"),
        _f("n_predict", _int, "server:n_predict"),
    )
}

#: Names that share a flag with llamarcp's own command line (same spelling, same meaning).
SHARED_FLAGS = frozenset({"model", "host", "port", "seed", "verbose"})


def parse_value(spec: Field, value: Any, where: str) -> Any:
    try:
        return spec.parse(value)
    except (TypeError, ValueError) as exc:
        raise CompatError(f"{where}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add llama-cpp-python's flags (`--n_ctx 2048`, `--embedding true`, ...) with dests `lcp.<name>`."""
    group = parser.add_argument_group(
        "llama-cpp-python names", "its server's flags, also read from the environment (N_CTX=...) or --config_file"
    )
    group.add_argument("--config_file", "--config-file", dest="config_file", help="JSON or YAML file: several models")
    for spec in [*SERVER_FIELDS.values(), *MODEL_FIELDS.values()]:
        if spec.name in SHARED_FLAGS:
            continue
        help_text = f"llama-cpp-python's {spec.name}" + (f" ({spec.why})" if spec.why else "")
        group.add_argument(
            f"--{spec.name}",
            dest=f"lcp.{spec.name}",
            nargs="*" if spec.many else None,
            metavar="VALUE",
            help=help_text if spec.target != "refuse" else argparse.SUPPRESS,
        )


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The llama-cpp-python flags given on the command line, parsed, keyed by name."""
    found: dict[str, Any] = {}
    for key, raw in vars(args).items():
        if not key.startswith("lcp.") or raw is None:
            continue
        name = key[4:]
        spec = MODEL_FIELDS.get(name) or SERVER_FIELDS[name]
        value = raw
        if spec.many:  # `--tensor_split 0.5 0.5` or `--tensor_split [0.5,0.5]`
            value = [v for item in raw for v in (json.loads(item) if item.startswith("[") else [item])]
        found[name] = parse_value(spec, value, f"--{name}")
    return found


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """llama-cpp-python's settings from environment variables (the field name, any case), parsed."""
    environ = os.environ if environ is None else environ
    lowered = {k.lower(): v for k, v in environ.items()}
    found: dict[str, Any] = {}
    for spec in [*SERVER_FIELDS.values(), *MODEL_FIELDS.values()]:
        if spec.name in lowered:
            found[spec.name] = parse_value(spec, lowered[spec.name], f"environment variable {spec.name.upper()}")
    return found


def read_config_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """llama-cpp-python's config file: (server fields, [model fields, ...]); YAML for .yaml/.yml, else JSON."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise CompatError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:  # pragma: no cover - pyyaml is part of the server extra
                raise CompatError("YAML config files need pyyaml: pip install 'llamarcp[server]'") from None
            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError
        raise CompatError(f"config file {file} is not valid {file.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompatError(f"config file {file}: the top level must be a mapping (server fields and models:)")
    server: dict[str, Any] = {}
    models: list[dict[str, Any]] = []
    for key, value in data.items():
        if key == "models":
            if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
                raise CompatError(f"config file {file}: models must be a list of mappings")
            for i, entry in enumerate(value):
                models.append(_parse_mapping(entry, MODEL_FIELDS, f"config file {file}, models[{i}]"))
                if "model" not in entry:
                    raise CompatError(f"config file {file}, models[{i}]: model (the GGUF path) is required")
        else:
            spec = SERVER_FIELDS.get(key) or EXTRA_CONFIG_FIELDS.get(key)
            if spec is None:
                known = [*SERVER_FIELDS, *EXTRA_CONFIG_FIELDS, "models"]
                raise CompatError(_unknown(key, f"config file {file}", known))
            server[key] = parse_value(spec, value, f"config file {file}, {key}")
    if not models:
        raise CompatError(f"config file {file} lists no models (models: [{{model: PATH, model_alias: NAME}}, ...])")
    # A relative model path is relative to the working directory (as llama-cpp-python reads it) when it exists
    # there, else to the config file's directory (so a file next to its models works from anywhere).
    for entry in models:
        model_path = Path(entry["model"]).expanduser()
        if not model_path.is_absolute() and not model_path.exists() and (file.parent / model_path).exists():
            entry["model"] = str(file.parent / model_path)
        else:
            entry["model"] = str(model_path)
    return server, models


def _parse_mapping(entry: Mapping[str, Any], fields: Mapping[str, Field], where: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, value in entry.items():
        spec = fields.get(key)
        if spec is None:
            raise CompatError(_unknown(key, where, list(fields)))
        if value is None:
            continue
        parsed[key] = parse_value(spec, value, f"{where}, {key}")
    return parsed


def _unknown(key: str, where: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown setting {key!r}{hint}"


def model_config(values: Mapping[str, Any], where: str = "") -> ModelConfig:
    """A ModelConfig from llama-cpp-python model field values (already parsed); refuses what llamarcp lacks."""
    config = ModelConfig()
    prefix = f"{where}: " if where else ""
    for name, value in values.items():
        spec = MODEL_FIELDS[name]
        if spec.target == "refuse":
            if value != spec.default:
                raise CompatError(f"{prefix}{name} is not supported by llamarcp: {spec.why}")
        elif spec.target == "noop":
            if value != spec.default:
                log.warning("%s%s=%r has no effect in llamarcp: %s", prefix, name, value, spec.why)
        elif spec.target == "llama":
            config.llama_kwargs[name] = value
        elif spec.target == "draft":
            pass  # read together below
        else:
            attr = spec.target.split(":", 1)[1]
            setattr(config, attr, value)
    _draft_model(config, values, prefix)
    if config.n_threads is not None and config.n_threads <= 0:  # llama-cpp-python: -1 = all cores
        config.n_threads = None
    if config.seed is not None and config.seed < 0:
        config.seed = None
    config.__post_init__()  # a multimodal chat_format becomes its handler's name
    return config


#: llama-cpp-python's server knows one `draft_model` method, by this name.
PROMPT_LOOKUP_DECODING = "prompt-lookup-decoding"


def _draft_model(config: ModelConfig, values: Mapping[str, Any], prefix: str) -> None:
    """`draft_model="prompt-lookup-decoding"` (+ `draft_model_num_pred_tokens`) -> LlamaPromptLookupDecoding."""
    method = values.get("draft_model")
    n_pred = values.get("draft_model_num_pred_tokens", 10)
    if method is None:
        if n_pred != 10:
            log.warning("%sdraft_model_num_pred_tokens=%r has no effect without draft_model", prefix, n_pred)
        return
    if method != PROMPT_LOOKUP_DECODING:
        raise CompatError(
            f"{prefix}draft_model must be {PROMPT_LOOKUP_DECODING!r} (llama-cpp-python's one method), "
            f"got {method!r}; a draft model file is --model-draft"
        )
    if not 1 <= n_pred <= 256:
        raise CompatError(f"{prefix}draft_model_num_pred_tokens must be in 1..256, got {n_pred}")
    from llamarcp.compat.speculative import LlamaPromptLookupDecoding

    config.llama_kwargs["draft_model"] = LlamaPromptLookupDecoding(num_pred_tokens=n_pred)


#: The server fields (llama-cpp-python's and llamarcp's) that ServerSettings takes under the same name; host, port,
#: ssl_* and timeout_keep_alive belong to the listener (uvicorn) instead.
SERVER_SETTINGS_FIELDS = (
    "api_key",
    "interrupt_requests",
    "disable_ping_events",
    "root_path",
    "max_queue",
    "max_loaded_models",
    "strict_model_names",
    "n_predict",
)


def server_settings(values: Mapping[str, Any], models: list[ModelConfig]) -> ServerSettings:
    """ServerSettings for `models` from parsed server field values (absent fields keep ServerSettings' defaults)."""
    return ServerSettings(models=models, **{k: values[k] for k in SERVER_SETTINGS_FIELDS if k in values})
