"""The embedded default models bundled with gaudi-serve.

Two small Llama models trained on the Python standard library (see ``MODEL_CARD.md`` and
``engine.assets.train``): the target ``pycoder`` and its speculative-decoding draft
``pycoder-draft``, which share one tokenizer. Each lives in a Hugging Face directory that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load offline.
"""

from __future__ import annotations

import pathlib

__all__ = [
    "DEFAULT_DRAFT_MODEL_NAME",
    "DEFAULT_MODEL_NAME",
    "default_draft_model_path",
    "default_model_path",
]

DEFAULT_MODEL_NAME = "pycoder"
DEFAULT_DRAFT_MODEL_NAME = "pycoder-draft"

_ASSETS_DIR = pathlib.Path(__file__).resolve().parent
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_model_path() -> pathlib.Path:
    """Return the directory of the bundled target model ``pycoder``.

    Raises:
        FileNotFoundError: if the directory or one of its model/tokenizer files is missing.
    """
    return _bundled_model_dir(DEFAULT_MODEL_NAME)


def default_draft_model_path() -> pathlib.Path:
    """Return the directory of the bundled draft model ``pycoder-draft``.

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
