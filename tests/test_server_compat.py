"""llama-cpp-python's server command line, environment variables and config file, read into llamarcp's settings
(llamarcp.server.compat and the resolution in llamarcp.server.__main__); no server is started here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamarcp.server import compat
from llamarcp.server.__main__ import UsageError, build_parser, resolve
from llamarcp.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent


def _resolve(argv: list[str], environ: dict[str, str] | None = None) -> tuple[ServerSettings, dict[str, Any]]:
    return resolve(build_parser().parse_args(argv), environ or {})


def test_llama_cpp_python_command_line_is_accepted() -> None:
    argv = ["--model", "m.gguf", "--n_ctx", "1024", "--chat_format", "chatml", "--model_alias", "gpt-3.5-turbo"]
    argv += ["--embedding", "false", "--interrupt_requests", "true", "--n_threads", "-1", "--api_key", "k"]
    argv += ["--n_gpu_layers", "0", "--use_mmap", "True", "--verbose", "False", "--port", "8000"]
    argv += ["--tensor_split", "0.5", "0.5", "--chat_template_kwargs", '{"enable_thinking": false}']
    settings, listener = _resolve(argv)
    (model,) = settings.model_configs()
    assert (model.model, model.alias, model.n_ctx, model.chat_format) == ("m.gguf", "gpt-3.5-turbo", 1024, "chatml")
    assert model.n_threads is None  # -1 = all cores, llamarcp's default
    assert model.verbose is False
    assert model.chat_template_kwargs == {"enable_thinking": False}
    assert model.llama_kwargs == {
        "embedding": False,
        "use_mmap": True,
        "tensor_split": [0.5, 0.5],
        "swa_full": False,  # llama-server's KV memory: windowed layers keep their window (--swa-full)
    }
    assert settings.api_key == "k" and settings.interrupt_requests is True
    assert listener["port"] == 8000 and listener["host"] == "127.0.0.1"


def test_llamarcp_flags_and_defaults() -> None:
    settings, listener = _resolve(["-m", "m.gguf", "-c", "4096", "--chat-format", "gemma", "-v", "--alias", "x"])
    (model,) = settings.model_configs()
    assert (model.n_ctx, model.chat_format, model.verbose, model.alias) == (4096, "gemma", True, "x")
    assert model.n_batch == 512
    assert listener == {
        "host": "127.0.0.1",
        "port": 8080,
        "ssl_keyfile": None,
        "ssl_certfile": None,
        "timeout_keep_alive": 5.0,
    }
    assert settings.max_queue == 16 and settings.max_loaded_models == 1 and settings.strict_model_names is False


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-c", "4096", "--n_ctx", "2048"], "--ctx-size 4096 and --n_ctx 2048 set the same thing"),
        (["--alias", "a", "--model_alias", "b"], "--alias a and --model_alias b"),
        (["--chat-format", "chatml", "--chat_format", "gemma"], "--chat-format chatml and --chat_format gemma"),
        (["--api-key", "x", "--api_key", "y"], "--api-key x and --api_key y"),
        (["-ngl", "1", "--n_gpu_layers", "2"], "--n-gpu-layers 1 and --n_gpu_layers 2"),
    ],
)
def test_conflicting_pair_is_an_error(argv: list[str], fragment: str) -> None:
    with pytest.raises(UsageError, match="give only one") as info:
        _resolve(argv)
    assert fragment in str(info.value)


def test_prompt_lookup_draft_model_setting() -> None:
    from llamarcp.compat.speculative import LlamaPromptLookupDecoding

    settings, _ = _resolve(["--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", "7"])
    draft = settings.model_configs()[0].llama_kwargs["draft_model"]
    assert isinstance(draft, LlamaPromptLookupDecoding) and draft.num_pred_tokens == 7
    (config,) = _resolve(["--draft_model", "prompt-lookup-decoding"])[0].model_configs()
    assert config.llama_kwargs["draft_model"].num_pred_tokens == 10  # llama-cpp-python's default
    assert "draft_model" not in _resolve(["--draft_model_num_pred_tokens", "5"])[0].model_configs()[0].llama_kwargs


def test_the_same_value_twice_is_no_conflict() -> None:
    settings, _ = _resolve(["-c", "1024", "--n_ctx", "1024"])
    assert settings.model_configs()[0].n_ctx == 1024


def test_environment_variables_any_case_and_precedence() -> None:
    env = {"MODEL": "env.gguf", "N_CTX": "3072", "chat_format": "chatml", "API_KEY": "sk-env", "PORT": "9001"}
    settings, listener = _resolve([], env)
    (model,) = settings.model_configs()
    assert (model.model, model.n_ctx, model.chat_format) == ("env.gguf", 3072, "chatml")
    assert settings.api_key == "sk-env" and listener["port"] == 9001
    settings, listener = _resolve(["--n_ctx", "512", "--port", "7000"], env)  # the command line wins
    assert settings.model_configs()[0].n_ctx == 512 and listener["port"] == 7000
    settings, _ = _resolve([], {"LLAMARCP_API_KEY": "sk-own"})
    assert settings.api_key == "sk-own"


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--n_ctx", "big"], {}, "--n_ctx: invalid literal"),
        (["--embedding", "maybe"], {}, "--embedding: not a boolean"),
        ([], {"N_CTX": "x"}, "environment variable N_CTX"),
        (["--chat_template_kwargs", "[1]"], {}, "not a JSON object"),
        (["--kv_overrides", "a=int:1"], {}, "kv_overrides is not supported"),
        (["--chat_format", "llava-1-5"], {}, "needs a projector"),
        (["--hf_model_repo_id", "x/y"], {}, "HuggingFace"),
        (["--draft_model", "eagle"], {}, "draft_model must be 'prompt-lookup-decoding'"),
        (["--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", "0"], {}, "in 1..256"),
        (
            ["--draft_model", "prompt-lookup-decoding", "--spec-type", "ngram-simple"],
            {},
            "set the same thing",
        ),
        (["--yarn_ext_factor", "0.5"], {}, "YaRN"),
        (["--rope_scaling_type", "1"], {}, "RoPE scaling"),
        (["--vocab_only", "true"], {}, "vocab-only"),
        (["--max-queue", "0"], {}, "max_queue must be at least 1"),
        (["--max-loaded-models", "0"], {}, "max_loaded_models"),
    ],
)
def test_bad_or_unsupported_settings_are_refused(argv: list[str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises((UsageError, compat.CompatError)) as info:
        _resolve(argv, env)
    assert fragment in str(info.value)


def test_no_op_settings_are_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    argv = ["--cache", "true", "--logits_all", "false", "--yarn_ext_factor", "-1.0", "--rope_scaling_type", "-1"]
    settings, _ = _resolve(argv)
    assert settings.model_configs()[0].llama_kwargs == {"swa_full": False}  # the server's default, not a setting
    assert "cache=True has no effect" in caplog.text and "logits_all=False has no effect" in caplog.text
    assert "yarn" not in caplog.text  # left at its default: nothing to say


def _two_models(tmp_path: Path) -> dict[str, Any]:
    return {
        "host": "0.0.0.0",
        "port": 8123,
        "api_key": "sk-file",
        "max_loaded_models": 2,
        "models": [
            {"model": "a.gguf", "model_alias": "alpha", "n_ctx": 256, "chat_format": "chatml"},
            {"model": str(tmp_path / "b.gguf"), "model_alias": "beta", "embedding": True, "n_threads": 2},
        ],
    }


def test_json_config_file(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(_two_models(tmp_path)))
    (tmp_path / "a.gguf").write_bytes(b"")
    settings, listener = _resolve(["--config_file", str(path), "--port", "9999"])
    alpha, beta = settings.model_configs()
    assert alpha.model == str(tmp_path / "a.gguf")  # not in the working directory: beside the config file
    assert (alpha.alias, alpha.n_ctx, alpha.chat_format) == ("alpha", 256, "chatml")
    assert (beta.alias, beta.n_threads, beta.llama_kwargs) == ("beta", 2, {"embedding": True, "swa_full": False})
    assert settings.api_key == "sk-file" and settings.max_loaded_models == 2
    assert listener["host"] == "0.0.0.0" and listener["port"] == 9999  # the command line overrides the file


def test_relative_model_paths_prefer_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, work = tmp_path / "configs", tmp_path / "work"
    config_dir.mkdir()
    (work / "models").mkdir(parents=True)
    (work / "models" / "m.gguf").write_bytes(b"")
    (config_dir / "other.gguf").write_bytes(b"")
    path = config_dir / "c.json"
    path.write_text('{"models": [{"model": "models/m.gguf"}, {"model": "other.gguf"}, {"model": "none.gguf"}]}')
    monkeypatch.chdir(work)
    first, second, third = _resolve(["--config_file", str(path)])[0].model_configs()
    assert first.model == "models/m.gguf"  # as llama-cpp-python reads it
    assert second.model == str(config_dir / "other.gguf")
    assert third.model == "none.gguf"  # found nowhere: reported as given at startup


def test_yaml_config_file_and_the_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "port: 8124\n"
        "models:\n"
        "  - model: a.gguf\n"
        "    model_alias: alpha\n"
        "    n_ctx: 512\n"
        "  - model: b.gguf\n"
        "    model_alias: beta\n"
        "    chat_template_kwargs: {enable_thinking: false}\n"
    )
    settings, listener = _resolve([], {"CONFIG_FILE": str(path)})
    alpha, beta = settings.model_configs()
    assert (alpha.alias, alpha.n_ctx, beta.alias, beta.chat_template_kwargs) == (
        "alpha",
        512,
        "beta",
        {"enable_thinking": False},
    )
    assert listener["port"] == 8124


@pytest.mark.parametrize(
    ("content", "name", "fragment"),
    [
        ("{", "c.json", "is not valid json"),
        ("models: [", "c.yaml", "is not valid yaml"),
        ("[]", "c.json", "top level must be a mapping"),
        ('{"models": []}', "c.json", "lists no models"),
        ('{"models": [{"model_alias": "x"}]}', "c.json", "model (the GGUF path) is required"),
        ('{"models": [{"model": "a", "n_ctxx": 5}]}', "c.json", "unknown setting 'n_ctxx' (did you mean 'n_ctx'?)"),
        ('{"prot": 1, "models": [{"model": "a"}]}', "c.json", "unknown setting 'prot' (did you mean 'port'?)"),
        ('{"models": [{"model": "a", "n_ctx": "many"}]}', "c.json", "models[0], n_ctx"),
        ('{"models": [{"model": "a"}, {"model": "a"}]}', "c.json", "share the alias"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, name: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises((UsageError, compat.CompatError)) as info:
        _resolve(["--config_file", str(path)])
    assert fragment in str(info.value)


def test_model_flags_beside_a_config_file_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"models": [{"model": "a"}]}')
    with pytest.raises(UsageError, match="--n_ctx cannot be combined with --config_file"):
        _resolve(["--config_file", str(path), "-c", "1024"])
    with pytest.raises(compat.CompatError, match="cannot read config file"):
        _resolve(["--config_file", str(tmp_path / "missing.yaml")])


def test_command_line_errors_exit_2_with_the_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llamarcp.server", "--n_ctx", "2048", "-c", "1024"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "error: --ctx-size 1024 and --n_ctx 2048 set the same thing" in done.stderr


def test_help_lists_llama_cpp_python_names() -> None:
    out = build_parser().format_help()
    for flag in ("--config_file", "--n_ctx", "--model_alias", "--embedding", "--interrupt_requests", "--chat_format"):
        assert flag in out
    assert "--kv_overrides" not in out  # refused names are accepted by the parser but not advertised
