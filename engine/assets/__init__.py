"""The models gaudi-serve provides, and where they are.

``smollm2-135m-instruct`` is the default chat model: SmolLM2-135M-Instruct, converted at
install time (``gaudi-serve models prepare``, see ``engine.assets.smollm2``) into a cache
folder, ``~/.cache/gaudi-serve/models`` unless the caller passes another (the serving layers
pass ``GAUDI_SERVE_MODELS_DIR``). Two small Llama models trained on the Python standard
library are bundled in the package (see ``MODEL_CARD.md`` and ``engine.assets.train``): the
code model ``pycoder``, the fallback when SmolLM2 is not prepared, and its
speculative-decoding draft ``pycoder-draft``, which share one tokenizer. SmolLM2's own
draft, ``smollm2-135m-instruct-draft``, is found next to it once built and assembled
locally (``engine.assets.smollm2_draft``; not shipped: it does not speed decoding up on the
CPU). Each lives in a Hugging Face directory that
``AutoModelForCausalLM.from_pretrained`` loads offline.

Nothing here imports torch or transformers: finding a model is cheap.
"""

from __future__ import annotations

import json
import logging
import pathlib

__all__ = [
    "BUNDLED_MODEL_NAMES",
    "DEFAULT_DRAFT_MODEL_NAME",
    "DEFAULT_MODEL_NAME",
    "DRAFT_MODEL_NAME",
    "FALLBACK_MODEL_NAME",
    "MODEL_NAMES",
    "PREPARED_MARKER",
    "PREPARED_MODEL_NAMES",
    "PREPARE_COMMAND",
    "default_draft_model_path",
    "default_model_path",
    "default_models_dir",
    "prepared_model_path",
]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
FALLBACK_MODEL_NAME = "pycoder"
DEFAULT_DRAFT_MODEL_NAME = "pycoder-draft"
# SmolLM2's draft (a `draft_model` for speculative decoding on smollm2-135m-instruct)
DRAFT_MODEL_NAME = "smollm2-135m-instruct-draft"
BUNDLED_MODEL_NAMES = (FALLBACK_MODEL_NAME, DEFAULT_DRAFT_MODEL_NAME)
PREPARED_MODEL_NAMES = (DEFAULT_MODEL_NAME, DRAFT_MODEL_NAME)
MODEL_NAMES = (*PREPARED_MODEL_NAMES, *BUNDLED_MODEL_NAMES)
# Written last into a prepared folder; its "format" must be PREPARED_FORMAT (a newer
# conversion bumps it, and `gaudi-serve models prepare` then converts again).
PREPARED_MARKER = ".prepared.json"
PREPARED_FORMAT = 2  # 2: config.json names its architecture
PREPARE_COMMAND = "gaudi-serve models prepare"

_ASSETS_DIR = pathlib.Path(__file__).resolve().parent
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_log = logging.getLogger(__name__)


def default_models_dir() -> pathlib.Path:
    """The folder prepared models go to by default: ``~/.cache/gaudi-serve/models``."""
    return pathlib.Path.home() / ".cache" / "gaudi-serve" / "models"


def prepared_model_path(
    name: str = DEFAULT_MODEL_NAME, models_dir: str | pathlib.Path | None = None
) -> pathlib.Path | None:
    """The folder of the prepared model `name` under `models_dir` (default:
    `default_models_dir()`), or None when it is not completely prepared there."""
    if name not in PREPARED_MODEL_NAMES:
        raise ValueError(f"name must be one of {list(PREPARED_MODEL_NAMES)}, got {name!r}")
    model_dir = pathlib.Path(models_dir or default_models_dir()).expanduser() / name
    try:
        marker = json.loads((model_dir / PREPARED_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != PREPARED_FORMAT:
        return None
    if any(not (model_dir / f).is_file() for f in _REQUIRED_FILES):
        return None
    return model_dir.absolute()  # not resolved: the folder keeps its name (the model's)


def default_model_path(
    name: str | None = None, models_dir: str | pathlib.Path | None = None
) -> pathlib.Path:
    """The folder of a model gaudi-serve provides.

    `name` None: the default chat model ``smollm2-135m-instruct`` when it is prepared under
    `models_dir` (default: `default_models_dir()`), else the bundled ``pycoder``, with a
    warning that says how to prepare SmolLM2. Otherwise one of `MODEL_NAMES`.

    Raises:
        ValueError: for a name gaudi-serve does not provide.
        FileNotFoundError: for a prepared model (``smollm2-135m-instruct`` or its draft
            ``smollm2-135m-instruct-draft``) that is not prepared, or a bundled model whose
            files are missing.
    """
    if name is None:
        found = prepared_model_path(DEFAULT_MODEL_NAME, models_dir)
        if found is not None:
            return found
        _log.warning(
            "the default model %r is not prepared in %s; serving the bundled %r instead. "
            "Run `%s` (or `make install`) to fetch and convert it once.",
            DEFAULT_MODEL_NAME,
            pathlib.Path(models_dir or default_models_dir()).expanduser(),
            FALLBACK_MODEL_NAME,
            PREPARE_COMMAND,
        )
        return _bundled_model_dir(FALLBACK_MODEL_NAME)
    if name in BUNDLED_MODEL_NAMES:
        return _bundled_model_dir(name)
    if name not in PREPARED_MODEL_NAMES:
        raise ValueError(f"model name must be one of {list(MODEL_NAMES)}, got {name!r}")
    found = prepared_model_path(name, models_dir)
    if found is None:
        where = pathlib.Path(models_dir or default_models_dir()).expanduser() / name
        raise FileNotFoundError(
            f"model {name!r} is not prepared at {where}: run `{PREPARE_COMMAND}` "
            "(or `make install`) to fetch and convert it once"
        )
    return found


def default_draft_model_path() -> pathlib.Path:
    """Return the directory of the bundled draft model ``pycoder-draft`` (the draft of
    ``pycoder``; it does not share SmolLM2's vocabulary).

    Raises:
        FileNotFoundError: if the directory or one of its model/tokenizer files is missing.
    """
    return _bundled_model_dir(DEFAULT_DRAFT_MODEL_NAME)


def _bundled_model_dir(name: str) -> pathlib.Path:
    model_dir = _ASSETS_DIR / name
    missing = [f for f in _REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"bundled model {name!r} is incomplete at {model_dir}: missing {missing}. "
            "Reinstall gaudi-serve, or rebuild the assets with "
            "`python -m engine.assets.train --out engine/assets`."
        )
    return model_dir
