"""Configuration: one msgspec Struct tree, loaded from TOML, every key overridable from the
environment as `CCSERVER_<SECTION>__<KEY>` (CONTRACT.md). Errors name the bad key."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

ENV_PREFIX = "CCSERVER_"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DatabaseConfig(_Section):
    url: str = ""
    data_dir: str = ".ccserver"


class RadiusConfig(_Section):
    auth_listen: str = "127.0.0.1:1812"
    acct_listen: str = "127.0.0.1:1813"
    require_message_authenticator: bool = True


class DiameterConfig(_Section):
    listen: str = "127.0.0.1:3868"
    origin_host: str = "ccserver.local"
    origin_realm: str = "local"


class AdminApiConfig(_Section):
    listen: str = "127.0.0.1:8080"
    bootstrap_token: str = ""


class EngineConfig(_Section):
    max_call_seconds: int = 7200
    hold_ttl_seconds: int = 60


class LedgerConfig(_Section):
    batch_max: int = 1000  # items committed in one transaction at most
    queue_max: int = 10_000  # items waiting for the writer before callers wait
    retry_seconds_max: float = 5.0  # backoff cap while Postgres is unreachable


class LogConfig(_Section):
    level: str = "info"


class Config(_Section):
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    radius: RadiusConfig = msgspec.field(default_factory=RadiusConfig)
    diameter: DiameterConfig = msgspec.field(default_factory=DiameterConfig)
    admin_api: AdminApiConfig = msgspec.field(default_factory=AdminApiConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    ledger: LedgerConfig = msgspec.field(default_factory=LedgerConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)


def _validate(config: Config) -> None:
    checks = [
        (config.engine.max_call_seconds > 0, "engine.max_call_seconds", "must be positive"),
        (config.engine.hold_ttl_seconds > 0, "engine.hold_ttl_seconds", "must be positive"),
        (0 < config.ledger.batch_max <= 100_000, "ledger.batch_max", "must be 1-100000"),
        (config.ledger.queue_max > 0, "ledger.queue_max", "must be positive"),
        (
            config.log.level in ("debug", "info", "warning", "error"),
            "log.level",
            "must be debug, info, warning or error",
        ),
    ]
    for key in ("radius.auth_listen", "radius.acct_listen", "diameter.listen", "admin_api.listen"):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        checks.append((_is_host_port(value), key, f"{value!r} is not HOST:PORT"))
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{key}: {message}")


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 <= int(port) <= 65535


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        overrides.setdefault(section.lower(), {})[key.lower()] = value
    return overrides


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: {error}") from None
    for section, values in _env_overrides(os.environ if environ is None else environ).items():
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a table")
        target.update(values)
    try:
        # Environment values are strings: let msgspec turn "true" or "60" into bool or int.
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError(_name_the_key(str(error))) from None
    _validate(config)
    return config


def _name_the_key(message: str) -> str:
    match = re.search(r"at `\$\.(.+?)`", message)
    text = re.sub(r" - at `\$.*`", "", message)
    if "unknown field" in text.lower():
        field = re.search(r"`(.+?)`", text)
        prefix = f"{match.group(1)}." if match else ""
        return f"{prefix}{field.group(1) if field else '?'}: unknown key"
    return f"{match.group(1) if match else 'config'}: {text}"
