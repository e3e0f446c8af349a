"""MemoryConfig: every memory-management setting, validated once, from code or the environment.

Validation happens in ``__post_init__``, so an invalid config cannot exist: a bad value
raises ``ConfigError`` naming the environment variable it came from (or the field name
when it was set in code) before anything is built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final

from .defaults import DEFAULTS, GC_LEVELS, GCAggressiveness
from .exceptions import ConfigError

#: Environment variables read by ``from_env``, by field name (the reference's four, then
#: ours).
ENV_VARS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "max_memory_percent": "MAX_MEMORY_PERCENT",
        "max_session_memory_gb": "MAX_SESSION_MEMORY_GB",
        "session_timeout_minutes": "SESSION_TIMEOUT_MINUTES",
        "aggressive_gc": "AGGRESSIVE_GC",
        "session_idle_free_minutes": "SESSION_IDLE_FREE_MINUTES",
        "ledger_dir": "MEMORY_LEDGER_DIR",
        "spill_dir": "SESSION_SPILL_DIR",
        "spill_max_gb": "SESSION_SPILL_MAX_GB",
        "spill_min_free_percent": "SESSION_SPILL_MIN_FREE_PERCENT",
        "spill_idle_minutes": "SESSION_SPILL_IDLE_MINUTES",
        "spill_min_buffer_mb": "SESSION_SPILL_MIN_BUFFER_MB",
        "state_dir": "MEMORY_STATE_DIR",
        "gpu_warning_percent": "GPU_MEMORY_WARNING_PERCENT",
        "gpu_critical_percent": "GPU_MEMORY_CRITICAL_PERCENT",
        "gpu_floor_mb": "GPU_MEMORY_FLOOR_MB",
        "emergency_cleanup_threshold_mb": "MEMORY_EMERGENCY_FLOOR_MB",
    }
)
#: Where ``ledger_dir`` comes from when MEMORY_LEDGER_DIR is unset: the multiprocess
#: directory, which every worker of a gunicorn/uvicorn service already shares.
LEDGER_FALLBACK_VAR: Final = "PROMETHEUS_MULTIPROC_DIR"
_STR_FIELDS: Final = ("ledger_dir", "spill_dir", "state_dir")

_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})

_PERCENT_FIELDS: Final = (
    "max_memory_percent",
    "proactive_gc_threshold",
    "spill_min_free_percent",
    "gpu_warning_percent",
    "gpu_critical_percent",
)
_POSITIVE_FIELDS: Final = (
    "max_session_memory_gb",
    "session_timeout_minutes",
    "session_cleanup_interval_minutes",
    "monitoring_interval_sec",
    "emergency_cleanup_threshold_mb",
    "session_idle_free_minutes",
    "spill_max_gb",
    "spill_idle_minutes",
    "spill_min_buffer_mb",
    "gpu_floor_mb",
)
_GC_THRESHOLD_FIELDS: Final = ("gc_threshold_gen0", "gc_threshold_gen1", "gc_threshold_gen2")
#: The real bounds of each positive field: past them a value overflows later (a byte count
#: beyond int64, a thread timeout beyond what threading accepts), so it is refused here.
_UPPER: Final[Mapping[str, float]] = MappingProxyType(
    {
        "max_session_memory_gb": float(1 << 32),  # 4 EiB in GiB
        "emergency_cleanup_threshold_mb": float(1 << 42),  # 4 EiB in MiB
        "session_timeout_minutes": 1e8,  # about 190 years
        "session_cleanup_interval_minutes": 1e8,
        "monitoring_interval_sec": 86400.0,
        "session_idle_free_minutes": 1e8,
        "spill_max_gb": float(1 << 32),
        "spill_idle_minutes": 1e8,
        "spill_min_buffer_mb": float(1 << 42),
        "gpu_floor_mb": float(1 << 42),
    }
)
#: gc.set_threshold takes a C int.
_GC_THRESHOLD_MAX: Final = (1 << 31) - 1
_BOOL_FIELDS: Final = (
    "aggressive_gc",
    "enable_background_monitoring",
    "enable_auto_gc",
    "enable_proactive_gc",
    "enable_request_rejection",
)


def parse_bool(variable: str, text: str) -> bool:
    """Parse true/false/1/0/yes/no in any case; anything else is a ConfigError."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(variable, text, "expected one of true/false, 1/0, yes/no")


def parse_number(variable: str, text: str) -> float:
    """Parse a finite decimal number; NaN, infinities and non-numbers are ConfigErrors."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(variable, text, "not a number") from None
    if not math.isfinite(value):
        raise ConfigError(variable, text, "must be a finite number")
    return value


@dataclass(frozen=True)
class MemoryConfig:
    """Memory-management settings; the reference's fields plus every documented default.

    ``max_memory_percent`` is the warning threshold (the reference's
    ``memory_warning_threshold``, also readable under that name). ``sources`` says where
    each field's value came from: ``"default"``, ``"code"`` or ``"env:NAME"``.
    """

    max_memory_percent: float = DEFAULTS.memory_warning_threshold
    max_session_memory_gb: float = DEFAULTS.max_session_memory_gb
    session_timeout_minutes: float = DEFAULTS.session_timeout_minutes
    aggressive_gc: bool = False
    session_cleanup_interval_minutes: float = DEFAULTS.session_cleanup_interval_minutes
    monitoring_interval_sec: float = DEFAULTS.monitoring_interval_sec
    enable_background_monitoring: bool = DEFAULTS.enable_background_monitoring
    gc_aggressiveness: GCAggressiveness = DEFAULTS.gc_aggressiveness
    enable_auto_gc: bool = DEFAULTS.enable_auto_gc
    gc_threshold_gen0: int = DEFAULTS.gc_threshold_gen0
    gc_threshold_gen1: int = DEFAULTS.gc_threshold_gen1
    gc_threshold_gen2: int = DEFAULTS.gc_threshold_gen2
    emergency_cleanup_threshold_mb: float = DEFAULTS.emergency_cleanup_threshold_mb
    enable_proactive_gc: bool = DEFAULTS.enable_proactive_gc
    proactive_gc_threshold: float = DEFAULTS.proactive_gc_threshold
    enable_request_rejection: bool = DEFAULTS.enable_request_rejection
    #: Beyond the reference: sessions idle this long may be freed (least recently used
    #: first) to admit a request that does not fit, before it is refused.
    session_idle_free_minutes: float = 5.0
    #: Beyond the reference: a directory shared by every worker of one container, where
    #: their reservations are booked in one ledger (``ledger.SharedLedger``); "" = this
    #: process only.
    ledger_dir: str = ""
    #: Beyond the reference: where idle sessions' large buffers are spilled (encrypted)
    #: before any eviction; "" = spilling off. The rest bound it: a byte budget, the disk's
    #: free share to leave, the idle age before a session may be spilled, the smallest
    #: buffer worth a file.
    spill_dir: str = ""
    spill_max_gb: float = 10.0
    spill_min_free_percent: float = 10.0
    spill_idle_minutes: float = 0.5
    spill_min_buffer_mb: float = 4.0
    #: Beyond the reference: where the monitor keeps its post-mortem file (the last
    #: readings, level changes and emergency runs), read back at the next start to say how
    #: the previous run ended; "" = off.
    state_dir: str = ""
    #: Beyond the reference: the GPU ladder, per device (docs/gpu.md): warning and critical
    #: used percent, and the free MiB below which a device is in EMERGENCY.
    gpu_warning_percent: float = 85.0
    gpu_critical_percent: float = 90.0
    gpu_floor_mb: float = 512.0
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def memory_warning_threshold(self) -> float:
        """The reference's name for the warning threshold (percent)."""
        return self.max_memory_percent

    @property
    def effective_gc_aggressiveness(self) -> GCAggressiveness:
        """``"high"`` when ``aggressive_gc`` is set, else ``gc_aggressiveness``."""
        return "high" if self.aggressive_gc else self.gc_aggressiveness

    def source_of(self, name: str) -> str:
        """Where field ``name`` came from: ``default``, ``code`` or ``env:VARIABLE``."""
        if name in self.sources:
            return self.sources[name]
        return "code" if getattr(self, name) != _DEFAULT_VALUES[name] else "default"

    def variable_of(self, name: str) -> str:
        """The name an error about field ``name`` shows: its environment variable when it
        came from one, else the field name."""
        return _name(self, name)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (no ``sources``), e.g. for a status report."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MemoryConfig:
        """Build a config from the environment; unset or empty variables mean the default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, variable in ENV_VARS.items():
            raw = env.get(variable, "")
            if raw.strip() == "":
                continue
            if name in _BOOL_FIELDS:
                values[name] = parse_bool(variable, raw)
            elif name in _STR_FIELDS:
                values[name] = raw.strip()
            else:
                values[name] = parse_number(variable, raw)
            sources[name] = f"env:{variable}"
        fallback = env.get(LEDGER_FALLBACK_VAR, "").strip()
        if "ledger_dir" not in values and fallback:
            values["ledger_dir"] = fallback
            sources["ledger_dir"] = f"env:{LEDGER_FALLBACK_VAR}"
        for name in _DEFAULT_VALUES:
            sources.setdefault(name, "default")
        try:
            return cls(**values, sources=MappingProxyType(sources))
        except ConfigError as exc:
            if exc.variable in env:  # show the text as the user wrote it
                raise ConfigError(exc.variable, env[exc.variable], exc.reason) from None
            raise


_DEFAULT_VALUES: Final[Mapping[str, Any]] = MappingProxyType(
    {f.name: f.default for f in fields(MemoryConfig) if f.name != "sources"}
)


def _name(config: MemoryConfig, name: str) -> str:
    """The name to show for a field: its environment variable when it came from there."""
    source = config.sources.get(name, "")
    return source[4:] if source.startswith("env:") else name


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(config: MemoryConfig) -> None:
    """Raise ConfigError for the first invalid field; checks types, ranges and ordering."""
    for name in _BOOL_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise ConfigError(_name(config, name), value, "must be a bool")
    _validate_numbers(config)
    for name in _STR_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(_name(config, name), value, "must be a path (a string, no NUL)")
    if config.gc_aggressiveness not in GC_LEVELS:
        raise ConfigError(
            _name(config, "gc_aggressiveness"),
            config.gc_aggressiveness,
            f"must be one of {', '.join(GC_LEVELS)}",
        )
    if config.max_memory_percent >= config.proactive_gc_threshold:
        raise ConfigError(
            _name(config, "max_memory_percent"),
            config.max_memory_percent,
            "warning threshold must be below the proactive-GC threshold "
            f"({config.proactive_gc_threshold:g} %)",
        )
    if config.gpu_warning_percent >= config.gpu_critical_percent:
        raise ConfigError(
            _name(config, "gpu_warning_percent"),
            config.gpu_warning_percent,
            "GPU warning threshold must be below the GPU critical threshold "
            f"({config.gpu_critical_percent:g} %)",
        )


def _validate_numbers(config: MemoryConfig) -> None:
    """Every number finite and within its real bounds (see ``_UPPER``)."""
    for name in (*_PERCENT_FIELDS, *_POSITIVE_FIELDS):
        value = getattr(config, name)
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(_name(config, name), value, "must be a finite number")
    for name in _PERCENT_FIELDS:
        value = getattr(config, name)
        if not 0 < value <= 100:
            raise ConfigError(_name(config, name), value, "percent must be in (0, 100]")
    for name in _POSITIVE_FIELDS:
        value = getattr(config, name)
        if value <= 0:
            raise ConfigError(_name(config, name), value, "must be greater than 0")
        if value > _UPPER[name]:
            raise ConfigError(_name(config, name), value, f"must be at most {_UPPER[name]:g}")
    for name in _GC_THRESHOLD_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(_name(config, name), value, "must be an integer >= 0")
        if value > _GC_THRESHOLD_MAX:
            raise ConfigError(_name(config, name), value, f"must be at most {_GC_THRESHOLD_MAX}")
