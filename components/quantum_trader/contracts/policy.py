"""The policy spec: one model for ``qt run``'s YAML and the TradingPolicy CRD's ``spec`` (DESIGN §5).

Field names on the wire are camelCase (Kubernetes convention); Python attributes are snake_case.
The operator generates its CRD schema from these models, so there is never a second copy.

Every number is finite (``.inf`` and ``.nan`` are floats to YAML) and bounded: a limit of ``.inf``
is no limit, and an approval TTL of ``.inf`` never expires. :func:`parse_policy` validates strictly
(``true`` is not a number, ``"5"`` is not an integer), the way the CRD's schema does.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from quantum_trader.contracts.messages import Symbol
from quantum_trader.contracts.registry import COMPONENTS

IMAGE_DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


class Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, allow_inf_nan=False
    )


class Mode(StrEnum):
    PAPER = "paper"
    TESTNET = "testnet"
    LIVE = "live"


class SecretKeyRef(Spec):
    name: str = Field(description="name of a Secret in the policy's namespace")
    key: str = Field(description="key inside the Secret")


class ExchangeSecretRef(Spec):
    name: str = Field(description="Secret holding the exchange API credentials")
    api_key_key: str = Field(default="apiKey", description="key of the API key in the Secret")
    api_secret_key: str = Field(default="apiSecret", description="key of the API secret in the Secret")


class RedisSpec(Spec):
    url: str | None = Field(default=None, description="redis:// URL without a password")
    password_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret key with the password")
    managed: bool = Field(default=False, description="the operator runs a Redis StatefulSet for this policy")


class RiskLimits(Spec):
    max_open_positions: int = Field(default=10, ge=1, le=100_000, description="open positions + reservations")
    max_notional_per_trade: float = Field(default=1000.0, gt=0, le=1e9, description="USDT per entry")
    max_total_notional: float = Field(default=10000.0, gt=0, le=1e10, description="USDT over open positions")
    max_entries_per_hour: int = Field(
        default=6, ge=1, le=100_000, description="approved entries per symbol per hour"
    )
    max_entries_per_five_minutes: int = Field(
        default=2, ge=1, le=100_000, description="approved entries per symbol per 5 minutes"
    )
    cooldown_seconds: int = Field(
        default=300, ge=0, le=30 * 86400, description="no entry on a symbol this long after a close"
    )
    approval_ttl_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="an approval expires this long after"
    )
    max_leverage: int = Field(default=5, ge=1, le=125, description="leverage cap for entries")
    long_only: bool = Field(default=False, description="SELL intents never open a short: a flat-sell is skipped")
    max_portfolio_heat: float = Field(
        default=0.06, gt=0, le=1, description="sum of open risk to stop / equity that heat-gate allows"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RiskLimits:
        if self.max_notional_per_trade > self.max_total_notional:
            raise ValueError("maxNotionalPerTrade must not exceed maxTotalNotional")
        return self


class ModelRef(Spec):
    name: str = Field(default="baseline-trend", description="strategy or model artifact name")
    digest: str = Field(default="", description="sha256 of the model artifact baked into the image")
    xgboost_weight: float = Field(default=0.5, ge=0, le=1, description="ensemble weight of the xgboost model")
    torch_weight: float = Field(default=0.5, ge=0, le=1, description="ensemble weight of the torch model")
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="an intent needs the ensemble's up (or down) probability at least this"
    )
    stop_atr: float = Field(default=2.0, gt=0, le=100, description="stop-loss distance in ATRs (learned models)")
    take_profit_atr: float = Field(default=3.0, gt=0, le=100, description="take-profit distance in ATRs")

    @model_validator(mode="after")
    def _some_weight(self) -> ModelRef:
        if self.xgboost_weight + self.torch_weight <= 0:
            raise ValueError("model: xgboostWeight and torchWeight must not both be 0")
        return self


class ComponentSettings(Spec):
    enabled: bool = Field(default=True, description="run this component")
    replicas: int = Field(default=1, ge=0, le=32, description="Deployment replicas")
    resources: dict[str, dict[str, str]] | None = Field(
        default=None, description="Kubernetes resource requests and limits"
    )


class StreamRetention(Spec):
    max_len: int = Field(default=100_000, ge=100, le=100_000_000, description="XADD MAXLEN ~ for every stream")
    max_deliveries: int = Field(
        default=5, ge=1, le=1000, description="deliveries before a message goes to the DLQ"
    )
    claim_idle_ms: int = Field(default=30_000, ge=100, le=86_400_000, description="pending this long is reclaimed")
    done_ttl_seconds: int = Field(
        default=7 * 86400, ge=60, le=366 * 86400, description="life of idempotency keys"
    )


class MarketDataSource(StrEnum):
    REPLAY = "replay"
    SYNTHETIC = "synthetic"
    LIVE = "live"


class MarketDataSpec(Spec):
    source: MarketDataSource = Field(default=MarketDataSource.REPLAY, description="replay | synthetic | live")
    files: list[str] = Field(default_factory=list, description="kline CSV files to replay (path or glob)")
    speed: float = Field(
        default=0.0, ge=0, le=1_000_000, description="replay speed: 1 real time, N times faster, 0 as fast as possible"
    )
    bar_interval_ms: int = Field(
        default=0, ge=0, le=86_400_000, description="pacing interval when speed > 0 (0: from files)"
    )
    seed: int = Field(default=7, ge=0, le=2**32 - 1, description="seed of the synthetic generator")
    synthetic_bars: int = Field(
        default=2000, ge=1, le=10_000_000, description="bars per symbol of the synthetic generator"
    )
    start_price: float = Field(default=100.0, gt=0, le=1e6, description="first price of the synthetic generator")
    max_bars: int = Field(
        default=0, ge=0, le=1_000_000_000, description="stop after this many bars per symbol (0: all)"
    )
    skip_bars: int = Field(
        default=0, ge=0, le=1_000_000_000, description="skip this many bars at the start of each file"
    )
    lockstep: bool = Field(
        default=False,
        description="publish the next tick only when every stream is drained: a replay fully deterministic",
    )


class StrategySpec(Spec):
    fast: int = Field(default=12, ge=2, le=10_000, description="fast EMA length (bars)")
    slow: int = Field(default=48, ge=3, le=10_000, description="slow EMA length (bars)")
    atr: int = Field(default=14, ge=2, le=10_000, description="ATR length (bars)")
    stop_atr: float = Field(default=2.0, gt=0, le=100, description="stop-loss distance in ATRs")
    take_profit_atr: float = Field(default=3.0, gt=0, le=100, description="take-profit distance in ATRs")
    notional: float = Field(default=500.0, gt=0, le=1e9, description="USDT per intent")
    leverage: int = Field(default=2, ge=1, le=125, description="leverage per intent")
    min_confidence: float = Field(default=0.0, ge=0, le=1, description="intents below are not sent")

    @model_validator(mode="after")
    def _ordered(self) -> StrategySpec:
        if self.fast >= self.slow:
            raise ValueError("strategy.fast must be shorter than strategy.slow")
        return self


class FaultSpec(Spec):
    latency_ms: float = Field(default=0.0, ge=0, le=60_000, description="added to every request")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="share of order requests answered 5xx")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1, description="share answered 429")
    timeout_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of orders accepted, then the answer withheld"
    )
    timeout_seconds: float = Field(default=15.0, ge=0, le=600, description="how long a withheld answer hangs")


class SimulatorSpec(Spec):
    port: int = Field(default=0, ge=0, le=65535, description="listen port (0: any free port, local mode)")
    taker_fee: float = Field(default=0.0004, ge=0, le=0.01, description="fee rate on notional")
    slippage_bps: float = Field(default=1.0, ge=0, le=1000, description="price moved against the taker")
    starting_balance: float = Field(default=10_000.0, gt=0, le=1e10, description="USDT wallet balance")
    seed: int = Field(default=11, ge=0, le=2**32 - 1, description="seed of fault injection")
    faults: FaultSpec = Field(default_factory=FaultSpec, description="fault injection for tests")


class ExchangeSpec(Spec):
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="HTTP timeout per request")
    recv_window_ms: int = Field(default=5000, ge=1, le=60000, description="Binance recvWindow for signed requests")


class ReconcilerSpec(Spec):
    interval_seconds: float = Field(default=30.0, gt=0, le=86400, description="time between reconciliations")
    qty_tolerance_steps: float = Field(
        default=1.0, ge=0, le=1_000_000, description="allowed qty difference in step sizes"
    )
    entry_tolerance: float = Field(
        default=0.0001, ge=0, le=1, description="allowed relative entry price difference"
    )


class ExitSpec(Spec):
    mode: Literal["SHADOW", "LIVE"] = Field(default="SHADOW", description="advanced exit logic mode")
    rollout_percent: int = Field(default=0, ge=0, le=100, description="share of symbols live")
    pinned_live: list[Symbol] = Field(default_factory=list, description="always live")
    pinned_shadow: list[Symbol] = Field(default_factory=list, description="never live")
    max_hold_minutes: int = Field(
        default=0, ge=0, le=525_600, description="advanced: close after this long (0: off)"
    )


class PolicySpec(Spec):
    """The TradingPolicy spec; also the document ``qt run -f policy.yaml`` reads."""

    image: str | None = Field(
        default=None, description="container image pinned by digest: repo@sha256:<64 hex> (cluster only)"
    )
    mode: Mode = Field(default=Mode.PAPER, description="paper | testnet | live")
    confirm_live: bool = Field(default=False, description="must be true for mode live: real money at risk")
    exchange_secret_ref: ExchangeSecretRef | None = Field(
        default=None, description="Secret with the exchange API key and secret (testnet, live)"
    )
    redis: RedisSpec = Field(default_factory=RedisSpec, description="where the instance's Redis is")
    symbols: list[Symbol] = Field(
        default_factory=lambda: ["BTCUSDT"], min_length=1, max_length=1000, description="allowlist of tradable symbols"
    )
    risk: RiskLimits = Field(default_factory=RiskLimits, description="governor limits")
    model: ModelRef = Field(default_factory=ModelRef, description="model artifact in the image")
    strategy: StrategySpec = Field(default_factory=StrategySpec, description="baseline strategy parameters")
    components: dict[str, ComponentSettings] = Field(
        default_factory=dict, description="per-component settings by component name"
    )
    streams: StreamRetention = Field(default_factory=StreamRetention, description="stream retention")
    market_data: MarketDataSpec = Field(default_factory=MarketDataSpec, description="market data source")
    exchange: ExchangeSpec = Field(default_factory=ExchangeSpec, description="exchange client settings")
    simulator: SimulatorSpec = Field(default_factory=SimulatorSpec, description="exchange-sim settings")
    reconciler: ReconcilerSpec = Field(default_factory=ReconcilerSpec, description="reconciler settings")
    exits: ExitSpec = Field(default_factory=ExitSpec, description="exit-brain settings")

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("symbols must not repeat")
        return values

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_DIGEST.match(value):
            raise ValueError(f"image {value!r} must be pinned by digest: <repository>@sha256:<64 hex>")
        return value

    @field_validator("components")
    @classmethod
    def _known_components(cls, value: dict[str, ComponentSettings]) -> dict[str, ComponentSettings]:
        unknown = sorted(set(value) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; known: {sorted(COMPONENTS)}")
        return value

    @model_validator(mode="after")
    def _live_needs_confirmation(self) -> PolicySpec:
        if self.mode is Mode.LIVE and not self.confirm_live:
            raise ValueError("mode live needs confirmLive: true")
        if self.mode in (Mode.LIVE, Mode.TESTNET) and self.exchange_secret_ref is None:
            raise ValueError(f"mode {self.mode.value} needs exchangeSecretRef")
        return self

    def enabled_components(self) -> list[str]:
        """Registered components that run in this mode and are not disabled, in registry order."""
        names = []
        for name, spec in COMPONENTS.items():
            if spec.paper_only and self.mode is not Mode.PAPER:
                continue
            settings = self.components.get(name)
            if settings is not None and not settings.enabled:
                continue
            names.append(name)
        return names


class PolicyError(ValueError):
    """A policy document that cannot be used, with a one-line explanation."""


def describe_validation_error(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())


def parse_policy(document: Any) -> PolicySpec:
    """A policy from a parsed YAML document: a bare spec, or a TradingPolicy object with ``spec``."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PolicyError("the policy must be a mapping")
    if document.get("kind") == "TradingPolicy":
        document = document.get("spec") or {}
    return _validated_strictly(document)


def _validated_strictly(document: dict) -> PolicySpec:
    """The spec validated as JSON in strict mode: numbers must be numbers, as in the CRD's schema.

    Python-mode strictness would refuse ``"paper"`` for the mode enum; JSON-mode takes enum values.
    """
    try:
        payload = json.dumps(document)
    except (TypeError, ValueError, RecursionError) as error:
        raise PolicyError(f"the policy holds a value that is not plain data: {error}") from None
    try:
        return PolicySpec.model_validate_json(payload, strict=True)
    except ValidationError as error:
        # deeper than pydantic's JSON parser goes (~200) but within YAML's: not "<root>: Invalid JSON"
        if any(e["type"] == "json_invalid" and "recursion limit" in e["msg"] for e in error.errors()):
            raise PolicyError("the policy is nested too deeply to be a policy") from None
        raise PolicyError(describe_validation_error(error)) from None


MAX_POLICY_BYTES = 1024 * 1024
"""a policy file is a few KiB; Kubernetes stores an object of at most ~1.5 MiB. Anything larger is a wrong
file, read no further (a device like /dev/zero has no end)"""


def load_policy(path: str | Path) -> PolicySpec:
    """A policy from a YAML file; every way the file can be wrong is one ``PolicyError`` line.

    An empty file is refused rather than read as all defaults: it is far more often a truncated
    or wrong file than a wish for the defaults, which a user gets by giving no file at all.
    """
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_POLICY_BYTES + 1)  # never more: -f /dev/zero must not read without end
    except OSError as error:
        raise PolicyError(f"cannot read policy {path}: {error.strerror or error}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy {path} is larger than {MAX_POLICY_BYTES // 1024} KiB: not a policy")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError(f"policy {path} is not a text file (not UTF-8 at byte {error.start})") from None
    if not text.strip():
        raise PolicyError(f"policy {path} is empty; to run with the default policy, leave out -f")
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PolicyError(f"policy {path} is not valid YAML: {error.problem or error.context}{where}") from None
    except yaml.YAMLError as error:
        raise PolicyError(f"policy {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise PolicyError(f"policy {path} is nested too deeply to be a policy") from None
    if document is None:
        raise PolicyError(f"policy {path} holds only comments; to run with the default policy, leave out -f")
    return parse_policy(document)


def dump_policy(spec: PolicySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
