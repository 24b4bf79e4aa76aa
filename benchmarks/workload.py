"""Benchmark workloads: prompts cut from Python source every machine has (the standard
library of the running Python), deterministic for a given seed."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def code_prompts(tokenizer, num_prompts: int, min_len: int, max_len: int, seed: int = 0):
    """num_prompts token-id prompts with lengths uniform in [min_len, max_len], each a
    window of a randomly chosen stdlib file (files from the end of the sorted list, so a
    different slice than the one most training splits favour)."""
    rng = random.Random(seed)
    files = stdlib_files()
    prompts: list[list[int]] = []
    while len(prompts) < num_prompts:
        path = files[rng.randrange(len(files))]
        try:
            ids = tokenizer.encode(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        length = rng.randint(min_len, max_len)
        if len(ids) <= length:
            continue
        start = rng.randrange(len(ids) - length)
        prompts.append(ids[start : start + length])
    return prompts


def model_folder(spec: str) -> tuple[Path, str]:
    """(folder, model id) of a benchmark's model: a name gaudi-serve provides
    (engine.assets.MODEL_NAMES: ``smollm2-135m-instruct``, ``pycoder``, ...) or a local model
    folder, whose id is the folder's name."""
    from engine.assets import MODEL_NAMES, default_model_path
    from engine.loader import resolve_model_path

    if spec in MODEL_NAMES:
        return Path(default_model_path(spec)), spec
    path = resolve_model_path(spec)
    return path, path.name


def model_list(specs: str) -> list[tuple[Path, str]]:
    """model_folder of every entry of a comma-separated list; ValueError if it is empty."""
    models = [model_folder(s.strip()) for s in specs.split(",") if s.strip()]
    if not models:
        raise ValueError(f"--models must name at least one model, got {specs!r}")
    return models
