"""SmolLM2's speculative-decoding draft, ``smollm2-135m-instruct-draft``.

The draft is SmolLM2-135M-Instruct cut short (LayerSkip-style): the target's embedding,
final norm and tied head around a few decoder layers trained by distillation from the
target (``python -m engine.assets.smollm2_draft.build``, seeded, ~22 min on 2 cores), which
writes those layers, as bf16, to ``engine/assets/smollm2-draft-layers/``; `assemble` writes
the complete Hugging Face folder (fp32 safetensors, config, the target's tokenizer and chat
template) next to the prepared target, taking the embedding from it, so the draft speaks
the target's vocabulary by construction.

Not shipped, and not assembled by ``gaudi-serve models prepare``: measured below, it makes
speculative decoding slower than plain decoding on this CPU, so 14 MB of weights in the
package would buy users nothing. The script stays for a better recipe (and a bandwidth-
bound device, where a verify step costs what a decode step does).

Measured (2 layers; 35.4M parameters assembled, 7.08M shipped in 14.2 MB): greedy
agreement with the target on held-out stdlib code 14.7% (1.4% untrained). Through the
engine at batch 1, greedy, k=3 (``python -m benchmarks.speculative --model smollm2``):
per-token acceptance 8% on code prompts, 2% on chat prompts, so speculation with it runs
at 0.43-0.49x of plain decoding (adaptive speculation falls back to plain steps: 1.00x).
A draft step costs 0.25 of a target step (the tied 49152 x 576 head alone is ~0.2) and
a 4-token verify step 1.54x a 1-token one on this CPU, so even a perfect draft at k=3
would give at most 4 / (0.55 + 2 x 0.25 + 1.54) = 1.5x here.

Imported by its build script and the tests, never by serving code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

LAYERS_DIR = "smollm2-draft-layers"  # under engine/assets: what the build writes
LAYERS_FILE = "layers.safetensors"
RECIPE_FILE = "recipe.json"
# The target's files the draft folder takes unchanged (the ones present are copied).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
EMBEDDING = "model.embed_tokens.weight"


def shipped_layers_dir() -> Path:
    """The folder the build writes the draft layers to, inside the package (not in git)."""
    return Path(__file__).resolve().parent.parent / LAYERS_DIR


def assemble(
    target_dir: str | Path,
    models_dir: str | Path,
    *,
    layers_dir: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the draft folder `models_dir`/smollm2-135m-instruct-draft from the prepared
    target in `target_dir` and the shipped layers (`layers_dir`, default
    `shipped_layers_dir()`), unless it is there already for the same layers (or `force`).
    The marker is written last, into a staging folder renamed into place.

    Raises:
        ValueError: when the shipped layers do not fit the target's shapes.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from engine.assets import (
        DRAFT_MODEL_NAME,
        PREPARED_FORMAT,
        PREPARED_MARKER,
        prepared_model_path,
    )

    target_dir, models_dir = Path(target_dir), Path(models_dir).expanduser().resolve()
    layers_dir = Path(layers_dir) if layers_dir is not None else shipped_layers_dir()
    recipe = json.loads((layers_dir / RECIPE_FILE).read_text())
    done = prepared_model_path(DRAFT_MODEL_NAME, models_dir)
    if done is not None and not force and _marker(done).get("layers") == _fingerprint(recipe):
        log(f"{DRAFT_MODEL_NAME}: already assembled at {done}")
        return done
    config = json.loads((target_dir / "config.json").read_text())
    num_layers = int(recipe["num_layers"])
    tensors = {n: t.float() for n, t in load_file(str(layers_dir / LAYERS_FILE)).items()}
    with safe_open(str(target_dir / "model.safetensors"), framework="pt") as weights:
        tensors[EMBEDDING] = weights.get_tensor(EMBEDDING).to(torch.float32)
    _check_shapes(tensors, config, num_layers)
    config["num_hidden_layers"] = num_layers
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:num_layers]
    config["_model_name_or_path"] = DRAFT_MODEL_NAME
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / DRAFT_MODEL_NAME
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=models_dir) as tmp:
        staging = Path(tmp) / DRAFT_MODEL_NAME
        staging.mkdir()
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (target_dir / name).is_file():
                shutil.copyfile(target_dir / name, staging / name)
        facts: dict[str, Any] = {
            "format": PREPARED_FORMAT,
            "name": DRAFT_MODEL_NAME,
            "target": target_dir.name,
            "layers": _fingerprint(recipe),
            "num_parameters": sum(t.numel() for n, t in tensors.items()),
            "recipe": recipe,
        }
        (staging / PREPARED_MARKER).write_text(json.dumps(facts, indent=2) + "\n")
        for path in staging.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; the cache may serve other users
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    log(f"{DRAFT_MODEL_NAME}: assembled at {target} ({num_layers} layers)")
    return target


def _check_shapes(tensors: dict, config: dict, num_layers: int) -> None:
    """ValueError unless the shipped layers fit the target (another model, or a target
    whose embedding is not [vocab_size, hidden_size])."""
    hidden = config["hidden_size"]
    if tuple(tensors[EMBEDDING].shape) != (config["vocab_size"], hidden):
        raise ValueError(f"the target's {EMBEDDING} is not [vocab_size, hidden_size]")
    norm = tensors.get("model.norm.weight")
    if norm is None or tuple(norm.shape) != (hidden,):
        raise ValueError(
            f"the shipped draft layers do not fit the target: they need hidden_size "
            f"{None if norm is None else norm.shape[0]}, the target has {hidden}"
        )
    layer_ids = {int(n.split(".")[2]) for n in tensors if n.startswith("model.layers.")}
    if layer_ids != set(range(num_layers)):
        raise ValueError(
            f"the shipped draft layers hold layers {sorted(layer_ids)}, "
            f"but recipe.json says num_layers {num_layers}"
        )


def _fingerprint(recipe: dict) -> dict:
    return {k: recipe.get(k) for k in ("recipe", "seed", "num_layers", "final_loss")}


def _marker(folder: Path) -> dict:
    from engine.assets import PREPARED_MARKER

    try:
        found = json.loads((folder / PREPARED_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
