"""`llama_cpp.server.settings`: llama-cpp-python's settings objects for starting the server from Python.

    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    app = create_app(server_settings=ServerSettings(api_key="k"),
                     model_settings=[ModelSettings(model="m.gguf", n_ctx=4096, model_alias="m")])
    uvicorn.run(app, host="127.0.0.1", port=8000)

The fields are llama-cpp-python's, checked with the same tables as its config files and environment variables
(`llamarcp.server.compat`): an unknown field is an error naming the closest known one, a value of the wrong type
is an error, and a setting llamarcp cannot honour is refused when the app is made, as with a config file.
`to_server_settings` turns them into llamarcp's own `llamarcp.server.settings.ServerSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from llamarcp.server import compat
from llamarcp.server.settings import ServerSettings as LlamarcpServerSettings

__all__ = ["ConfigFileSettings", "ModelSettings", "ServerSettings", "Settings", "to_server_settings"]


class _Fields:
    """Keyword fields from one or more of llama-cpp-python's tables; unset fields read as None."""

    _tables: ClassVar[tuple[Mapping[str, compat.Field], ...]] = ()

    def __init__(self, **values: Any) -> None:
        known = {name: spec for table in self._tables for name, spec in table.items()}
        where = type(self).__name__
        self._set: dict[str, Any] = {}
        for name, value in values.items():
            spec = known.get(name)
            if spec is None:
                raise compat.CompatError(compat._unknown(name, where, list(known)))
            if value is not None:
                self._set[name] = compat.parse_value(spec, value, f"{where}.{name}")
        for name in known:
            object.__setattr__(self, name, self._set.get(name))

    def values(self, table: Mapping[str, compat.Field]) -> dict[str, Any]:
        """The fields given explicitly that belong to `table`."""
        return {k: v for k, v in self._set.items() if k in table}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={'***' if k == 'api_key' else repr(v)}" for k, v in self._set.items())
        return f"{type(self).__name__}({shown})"


class ModelSettings(_Fields):
    """One model: `model` (the GGUF path) and llama-cpp-python's model fields (n_ctx, chat_format, ...)."""

    _tables: ClassVar[tuple[Mapping[str, compat.Field], ...]] = (compat.MODEL_FIELDS,)

    def __init__(self, **values: Any) -> None:
        if values.get("model") is None:
            raise compat.CompatError("ModelSettings: model (the GGUF path) is required")
        super().__init__(**values)


class ServerSettings(_Fields):
    """The server's own fields (host, port, api_key, interrupt_requests, ...; llamarcp's max_queue and the
    like too). host/port/ssl_* are for the listener: pass them to uvicorn, as with llama-cpp-python."""

    _tables: ClassVar[tuple[Mapping[str, compat.Field], ...]] = (compat.SERVER_FIELDS, compat.EXTRA_CONFIG_FIELDS)


class Settings(ServerSettings, ModelSettings):
    """Server and one model's fields together (llama-cpp-python's `Settings`)."""

    _tables: ClassVar[tuple[Mapping[str, compat.Field], ...]] = (
        compat.SERVER_FIELDS,
        compat.EXTRA_CONFIG_FIELDS,
        compat.MODEL_FIELDS,
    )


class ConfigFileSettings(ServerSettings):
    """Server fields plus `models`, a list of ModelSettings (what a config file holds)."""

    def __init__(self, models: Sequence[ModelSettings] = (), **values: Any) -> None:
        if not models or not all(isinstance(m, ModelSettings) for m in models):
            raise compat.CompatError("ConfigFileSettings: models must be a non-empty list of ModelSettings")
        super().__init__(**values)
        self.models = list(models)


def to_server_settings(
    settings: Settings | ServerSettings | None = None,
    server_settings: ServerSettings | None = None,
    model_settings: Sequence[ModelSettings] | None = None,
) -> LlamarcpServerSettings:
    """llamarcp's ServerSettings from llama-cpp-python's `create_app(settings, server_settings, model_settings)`
    arguments: `settings` alone (a Settings, or a ConfigFileSettings with its models), or the other two."""
    if settings is not None and (server_settings is not None or model_settings is not None):
        raise compat.CompatError("create_app: pass settings, or server_settings and model_settings, not both")
    server: ServerSettings
    models: list[ModelSettings]
    if isinstance(settings, ConfigFileSettings):
        server, models = settings, settings.models
    elif settings is not None:
        if not isinstance(settings, Settings):
            raise TypeError(f"create_app: settings must be a Settings, got {type(settings).__name__}")
        server, models = settings, [settings]
    else:
        server = server_settings if server_settings is not None else ServerSettings()
        if not isinstance(server, ServerSettings):
            raise TypeError(f"create_app: server_settings must be a ServerSettings, got {type(server).__name__}")
        if not model_settings:
            raise compat.CompatError("create_app: model_settings must list at least one ModelSettings")
        models = list(model_settings)
    for i, model in enumerate(models):
        if not isinstance(model, ModelSettings):
            raise TypeError(f"create_app: model_settings[{i}] must be a ModelSettings, got {type(model).__name__}")
    configs = [compat.model_config(m.values(compat.MODEL_FIELDS), f"model_settings[{i}]") for i, m in enumerate(models)]
    given = {**server.values(compat.SERVER_FIELDS), **server.values(compat.EXTRA_CONFIG_FIELDS)}
    result = compat.server_settings(given, configs)
    result.validate()
    return result
