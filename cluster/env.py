"""Operator escape hatches: every environment variable gaudi-serve reads, all prefixed
GAUDI_SERVE_, each read (and checked loudly) by its accessor when needed, never at import.

    GAUDI_SERVE_CONFIG            serving config file for `serve run deployments.app:app`
    GAUDI_SERVE_DEVICE            what `device: auto` means for `deployments.app:app`
                                  (auto, cpu, cuda or hpu; default auto: probe the cluster)
    GAUDI_SERVE_MODELS_DIR        where `gaudi-serve models prepare` writes the default chat
                                  model and serving looks for it (default
                                  ~/.cache/gaudi-serve/models)
    GAUDI_SERVE_DRAIN_TIMEOUT_S   default seconds `gaudi-serve up` waits for in-flight
                                  requests on Ctrl-C / SIGTERM (default 30)
    GAUDI_SERVE_STREAM_INTERVAL_MS  least time between two chunks of one streamed answer
                                  (default 0: every step); a larger value sends fewer,
                                  bigger chunks, cutting per-chunk overhead under load
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DRAIN_TIMEOUT_S = 30.0


def serve_config_path() -> Path | None:
    """GAUDI_SERVE_CONFIG: a YAML serving config; None when unset."""
    value = os.environ.get("GAUDI_SERVE_CONFIG", "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"GAUDI_SERVE_CONFIG={value!r}: no such file (expected a YAML config)")
    return path


def serve_device() -> str | None:
    """GAUDI_SERVE_DEVICE: one of engine.devices.DEVICE_CHOICES; None when unset or auto
    (probe the cluster)."""
    from engine.devices import DEVICE_CHOICES

    value = os.environ.get("GAUDI_SERVE_DEVICE", "").strip().lower()
    if value not in ("", *DEVICE_CHOICES):
        choices = list(DEVICE_CHOICES)
        raise ValueError(f"GAUDI_SERVE_DEVICE must be one of {choices}, got {value!r}")
    return None if value in ("", "auto") else value


def models_dir() -> Path:
    """GAUDI_SERVE_MODELS_DIR: the folder of prepared models; default
    engine.assets.default_models_dir() (~/.cache/gaudi-serve/models)."""
    from engine.assets import default_models_dir

    value = os.environ.get("GAUDI_SERVE_MODELS_DIR", "").strip()
    if not value:
        return default_models_dir()
    path = Path(value).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"GAUDI_SERVE_MODELS_DIR={value!r} is not a directory (expected the folder "
            "prepared models live in)"
        )
    return path


def drain_timeout_s() -> float:
    """GAUDI_SERVE_DRAIN_TIMEOUT_S: a number of seconds >= 0; default 30."""
    return _seconds_like("GAUDI_SERVE_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_TIMEOUT_S)


def stream_interval_ms() -> float:
    """GAUDI_SERVE_STREAM_INTERVAL_MS: a number of milliseconds >= 0; default 0."""
    return _seconds_like("GAUDI_SERVE_STREAM_INTERVAL_MS", 0.0)


def _seconds_like(name: str, default: float) -> float:
    """A non-negative number from the environment variable `name`; `default` when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:  # also rejects nan
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return number
