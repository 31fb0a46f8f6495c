"""Component settings from the environment (DESIGN §8); flags of the same names override them."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quantum_trader.contracts.keys import validate_instance
from quantum_trader.contracts.policy import PolicyError, PolicySpec, load_policy
from quantum_trader.contracts.registry import COMPONENTS


class SettingsError(ValueError):
    """A missing or wrong setting: the component exits non-zero with this one line."""


@dataclass(frozen=True)
class Settings:
    component: str
    instance: str
    redis_url: str
    config_path: Path | None
    pod: str
    health_port: int
    metrics_port: int
    exchange_url: str | None
    api_key: str
    api_secret: str
    code_version: str
    image_digest: str

    def __repr__(self) -> str:  # never print credentials (invariant 10)
        return f"Settings(component={self.component!r}, instance={self.instance!r}, pod={self.pod!r})"

    def policy(self) -> PolicySpec:
        if self.config_path is None:
            return PolicySpec()
        try:
            return load_policy(self.config_path)
        except PolicyError as error:
            raise SettingsError(f"QT_CONFIG: {error}") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, str(default))
    try:
        port = int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{name}={port} is outside 0..65535")
    return port


def http_url_problem(text: str) -> str | None:
    """Why ``text`` is not an http(s) URL with a host, or None when it is one."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError as error:
        return f"{text!r} is not an http(s) URL ({error})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{text!r} is not an http(s) URL"
    return None


def _exchange_url(source: Mapping[str, str]) -> str | None:
    url = source.get("QT_EXCHANGE_URL") or None
    problem = http_url_problem(url) if url else None
    if problem:
        raise SettingsError(f"QT_EXCHANGE_URL: {problem}")
    return url


def load_settings(env: Mapping[str, str] | None = None, **overrides: str | None) -> Settings:
    """Settings from ``env`` (default: the process environment) with non-None ``overrides`` on top."""
    source = dict(os.environ if env is None else env)
    for name, value in overrides.items():
        if value is not None:
            source[name] = str(value)
    component = source.get("QT_COMPONENT", "")
    if component not in COMPONENTS:
        raise SettingsError(f"QT_COMPONENT={component!r} is not a component; known: {', '.join(COMPONENTS)}")
    instance = source.get("QT_INSTANCE", "")
    if not instance:
        raise SettingsError("QT_INSTANCE is not set (use '<namespace>.<policy>' or 'local')")
    try:
        validate_instance(instance)
    except ValueError as error:
        raise SettingsError(f"QT_INSTANCE: {error}") from None
    redis_url = source.get("QT_REDIS_URL", "")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"QT_REDIS_URL must be a redis:// URL, got {redis_url!r}" if redis_url else "QT_REDIS_URL is not set"
        )
    password = source.get("QT_REDIS_PASSWORD", "")
    if password and "@" not in redis_url.split("//", 1)[1]:
        redis_url = redis_url.replace("//", f"//:{password}@", 1)
    config = source.get("QT_CONFIG") or None
    config_path = Path(config) if config else None
    if config_path is not None and not config_path.is_file():
        raise SettingsError(f"QT_CONFIG={config} does not exist")
    return Settings(
        component=component,
        instance=instance,
        redis_url=redis_url,
        config_path=config_path,
        pod=source.get("QT_POD") or source.get("HOSTNAME") or socket.gethostname(),
        health_port=_port(source, "QT_HEALTH_PORT", 8080),
        metrics_port=_port(source, "QT_METRICS_PORT", 9100),
        exchange_url=_exchange_url(source),
        api_key=source.get("BINANCE_API_KEY", ""),
        api_secret=source.get("BINANCE_API_SECRET", ""),
        code_version=source.get("QT_CODE_VERSION", "") or code_version(),
        image_digest=source.get("QT_IMAGE_DIGEST", ""),
    )


def code_version() -> str:
    """The git commit baked into the image (QT_CODE_VERSION) or the package version."""
    from importlib.metadata import PackageNotFoundError, version

    baked = os.environ.get("QT_CODE_VERSION", "").strip()
    if baked:
        return baked
    try:
        return version("quantum-trader")
    except PackageNotFoundError:
        return "unknown"
