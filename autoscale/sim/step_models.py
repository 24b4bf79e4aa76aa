"""Step-time models of the simulator (the StepCost seam: autoscale.sim.step_cost), and
their files.

- `load_calibration(path)` -> CalibratedStepCost: a calib.json written by
  `gaudi-serve calibrate` (autoscale.sim.calibrate; the model: autoscale.sim.step_calibrated);
  `check_calibration(cost, ...)` refuses one measured for another model or engine layout;
- `analytic_cost_for(model_config, card, tp, dtype)` -> AnalyticStepCost: from config.json
  and a card's peaks (autoscale.sim.step_analytic, autoscale.sim.card_perf).

calib.json (format CALIBRATION_FORMAT, version CALIBRATION_VERSION):

    {"format": ..., "version": 1,
     "metadata": {"model", "dtype", "tp_size", "device", "block_size", "buckets",
                  "gaudi_serve_version", "date", ...},
     "measurements": [{"kind", "batch_size", "query_len", "num_blocks",
                       "median_s", "min_s", "max_s", "num_repeats"}, ...],
     "model": {"host_overhead": {"prefill": {"fixed_s", "per_row_s"}, "decode": {...}},
               "fits": {...}, "engine_check": {...}}}

"fits" is written for readers (the coefficients `from_measurements` derives); loading
recomputes it from the measurements, and takes the host overhead as written.

Run `python -m autoscale.sim.step_models --compare` for the analytic model against
published throughput figures (SIMULATOR.md).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from autoscale.sim.step_analytic import AnalyticStepCost
from autoscale.sim.step_calibrated import CalibratedStepCost, HostOverhead, Measurement
from autoscale.sim.step_cost import DECODE, PREFILL
from engine.shapes import StepShape

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "AnalyticStepCost",
    "CalibratedStepCost",
    "CalibrationError",
    "analytic_cost_for",
    "calibration_to_dict",
    "check_calibration",
    "load_calibration",
    "save_calibration",
]

CALIBRATION_FORMAT = "gaudi-serve-calibration"
CALIBRATION_VERSION = 1
_SHAPE_FIELDS = ("kind", "batch_size", "query_len", "num_blocks")


class CalibrationError(ValueError):
    """A calib.json that cannot be used; the message names the file and the field."""


def analytic_cost_for(
    model_config: str | pathlib.Path | Mapping[str, Any],
    card: str,
    tp: int = 1,
    dtype: str = "bfloat16",
    *,
    block_size: int = 16,
    kv_cache_dtype: str | None = None,
) -> AnalyticStepCost:
    """The analytic model of a model (config.json path, model folder or dict) on `card`
    (gaudi2 | gaudi3 | h100 | h200) at TP degree `tp` and weight dtype `dtype`
    (bfloat16 | float16 | float32 | fp8); block_size: the engine's KV block size."""
    config = dict(model_config) if isinstance(model_config, Mapping) else model_config
    return AnalyticStepCost.from_config(
        config, dtype, tp, card, block_size=block_size, kv_cache_dtype=kv_cache_dtype
    )


# -- calib.json -------------------------------------------------------------------------
def calibration_to_dict(cost: CalibratedStepCost, extra_model: Mapping[str, Any] = ()) -> dict:
    """The calib.json document of `cost`; extra_model: more entries of "model"."""
    return {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "metadata": dict(cost.metadata),
        "measurements": [
            {
                "kind": m.shape.kind,
                "batch_size": m.shape.batch_size,
                "query_len": m.shape.query_len,
                "num_blocks": m.shape.num_blocks,
                "median_s": m.median_s,
                "min_s": m.min_s,
                "max_s": m.max_s,
                "num_repeats": m.num_repeats,
            }
            for m in cost.raw
        ],
        "model": {
            "host_overhead": {kind: h._asdict() for kind, h in cost.host.items()},
            "fits": {kind: fit._asdict() for kind, fit in cost.fits.items()},
            **dict(extra_model),
        },
    }


def save_calibration(
    cost: CalibratedStepCost, path: str | pathlib.Path, extra_model: Mapping[str, Any] = ()
) -> None:
    pathlib.Path(path).write_text(
        json.dumps(calibration_to_dict(cost, extra_model), indent=1) + "\n", encoding="utf-8"
    )


def load_calibration(path: str | pathlib.Path) -> CalibratedStepCost:
    """Read a calib.json; CalibrationError names the file and the offending field."""
    path = pathlib.Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: not a readable JSON file ({exc})") from None
    return calibration_from_dict(doc, source=str(path))


def calibration_from_dict(doc: Any, source: str = "calibration") -> CalibratedStepCost:
    def fail(field: str, expected: str, value: Any) -> CalibrationError:
        return CalibrationError(f"{source}: field {field!r} must be {expected}, got {value!r}")

    if not isinstance(doc, dict):
        raise fail("(top level)", "a JSON object", type(doc).__name__)
    if doc.get("format") != CALIBRATION_FORMAT:
        raise fail("format", repr(CALIBRATION_FORMAT), doc.get("format"))
    if doc.get("version") != CALIBRATION_VERSION:
        raise fail("version", str(CALIBRATION_VERSION), doc.get("version"))
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise fail("metadata", "an object", metadata)
    block_size = metadata.get("block_size")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise fail("metadata.block_size", "a positive integer", block_size)
    items = doc.get("measurements")
    if not isinstance(items, list) or not items:
        raise fail("measurements", "a non-empty list", items)
    measurements = [_measurement(item, f"measurements[{i}]", fail) for i, item in enumerate(items)]
    host = _host_overhead(doc.get("model"), fail)
    try:
        return CalibratedStepCost.from_measurements(metadata, measurements, host)
    except ValueError as exc:
        raise CalibrationError(f"{source}: field 'measurements': {exc}") from None


def _measurement(item: Any, where: str, fail) -> Measurement:
    if not isinstance(item, dict):
        raise fail(where, "an object", item)
    kind = item.get("kind")
    if kind not in (PREFILL, DECODE):
        raise fail(f"{where}.kind", f"{PREFILL!r} or {DECODE!r}", kind)
    for name in _SHAPE_FIELDS[1:]:
        value = item.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(f"{where}.{name}", "a positive integer", value)
    median = item.get("median_s")
    if not _is_seconds(median):
        raise fail(f"{where}.median_s", "a non-negative finite number of seconds", median)
    for name in ("min_s", "max_s"):
        if item.get(name) is not None and not _is_seconds(item[name]):
            raise fail(f"{where}.{name}", "a non-negative finite number or null", item[name])
    shape = StepShape(kind, item["batch_size"], item["query_len"], item["num_blocks"])
    return Measurement(
        shape, float(median), item.get("min_s"), item.get("max_s"), int(item.get("num_repeats", 1))
    )


def _host_overhead(model: Any, fail) -> dict[str, HostOverhead]:
    if model is None:
        return {}
    if not isinstance(model, dict):
        raise fail("model", "an object", model)
    host = model.get("host_overhead", {})
    if not isinstance(host, dict):
        raise fail("model.host_overhead", "an object", host)
    out = {}
    for kind, values in host.items():
        where = f"model.host_overhead.{kind}"
        if kind not in (PREFILL, DECODE):
            raise fail("model.host_overhead", f"keys {PREFILL!r} and {DECODE!r}", kind)
        if not isinstance(values, dict):
            raise fail(where, "an object", values)
        for name in HostOverhead._fields:
            if not _is_seconds(values.get(name, 0.0)):
                raise fail(f"{where}.{name}", "a non-negative finite number", values.get(name))
        out[kind] = HostOverhead(**{n: float(values.get(n, 0.0)) for n in HostOverhead._fields})
    return out


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def check_calibration(cost: CalibratedStepCost, **expected: Any) -> None:
    """Refuse a calibration measured for something else: each keyword (e.g. model=,
    block_size=, tp_size=, dtype=, device=) must equal metadata's field of that name.
    Raises CalibrationError naming the first field that differs or is absent."""
    for name, value in expected.items():
        if name not in cost.metadata:
            raise CalibrationError(f"calibration metadata has no field {name!r} to check")
        if cost.metadata[name] != value:
            raise CalibrationError(
                f"calibration metadata.{name} is {cost.metadata[name]!r}, but the simulated "
                f"replica has {name} {value!r}: calibrate again for it (gaudi-serve calibrate)"
            )


if __name__ == "__main__":
    import sys

    from autoscale.sim.step_compare import main

    sys.exit(main(sys.argv[1:]))
