"""Render ``MODEL_CARD.md`` from what one training run measured."""

from __future__ import annotations

from dataclasses import dataclass

from engine.assets.training.evaluate import HeldOutReport
from engine.assets.training.loop import TrainStats
from engine.assets.training.recipes import SEQ_LEN_TOKENS, ModelRecipe

REPRODUCE_COMMAND = "nice -n 5 .venv/bin/python -m engine.assets.train --out engine/assets"


@dataclass(frozen=True)
class TrainedModel:
    """One trained model: its recipe, size and training statistics."""

    recipe: ModelRecipe
    num_params: int
    num_file_bytes: int
    stats: TrainStats


@dataclass(frozen=True)
class TrainingRun:
    """Everything the model card reports."""

    target: TrainedModel
    draft: TrainedModel
    held_out: HeldOutReport
    environment: str  # e.g. "Python 3.11.7, torch 2.13.0+cpu, 2 threads"
    precision: str
    seed: int
    num_train_files: int
    num_train_bytes: int
    num_train_tokens: int
    num_held_out_files: int
    vocab_size: int
    tokenizer_s: float
    total_s: float
    sample_prompt: str
    sample_completion: str


def render_model_card(run: TrainingRun) -> str:
    """The markdown text of the model card."""
    target, draft, held = run.target, run.draft, run.held_out
    rows = "\n".join(_model_row(m) for m in (target, draft))
    train_rows = "\n".join(_train_row(m) for m in (target, draft))
    return f"""# pycoder and pycoder-draft: the embedded models

Two tiny Llama models bundled with gaudi-serve so that the tests and the examples run with
no download. They complete Python source; they are **not** useful assistants. `pycoder` is
what `gaudi-serve up` serves when the default chat model (SmolLM2, prepared at install time)
is missing; `pycoder-draft` is its speculative-decoding draft and uses the identical
tokenizer files.

## Architecture

`transformers.LlamaForCausalLM`, RoPE (theta 10000), SwiGLU MLP, RMSNorm, tied input/output
embeddings, max_position_embeddings 2048, weights stored as fp32 safetensors.

| model | params | hidden | layers | heads | KV heads | head_dim | MLP | file bytes |
|---|---|---|---|---|---|---|---|---|
{rows}

## Data

The `*.py` files of the Python standard library of the training interpreter, minus test
directories, `pydoc_data/` and the generated charmap codecs (see
`engine/assets/training/corpus.py`). Files are split by a hash of their relative path:
{run.num_train_files} train files ({run.num_train_bytes / 1e6:.1f} MB, {run.num_train_tokens:,}
tokens) and {run.num_held_out_files} held-out files. Documents are packed into one stream,
each preceded by `<|endoftext|>`, and cut into windows of {SEQ_LEN_TOKENS} tokens.

## Tokenizer

Byte-level BPE (HF `tokenizers`), vocabulary {run.vocab_size}, trained on the train split in
{run.tokenizer_s:.1f} s. `<|endoftext|>` (id 0) is BOS, EOS and document separator and is
prepended to every encoded text; `<|pad|>` (id 1) pads. The chat template uses plain-text
markers: `<|endoftext|><|user|>\\n...\\n<|assistant|>\\n`.

## Training

AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warmup then cosine decay to
10% of the peak learning rate, gradient clipping 1.0, seed {run.seed}, {run.precision}.
The draft minimises `(1 - w) * cross_entropy + w * KL(target || draft)` against the
trained target's logits. Environment: {run.environment}.

| model | steps | tokens/step | tokens seen | peak lr | distill w | first loss | final loss | time |
|---|---|---|---|---|---|---|---|---|
{train_rows}

Total wall time including tokenizer, packing, evaluation and saving: {run.total_s / 60:.1f} min
(times depend on whatever else runs on the machine).

## Held-out evaluation

On the first {held.num_tokens:,} predicted positions of the held-out files (fp32, windows of
{SEQ_LEN_TOKENS} tokens, each scored from its own prefix):

| figure | value |
|---|---|
| target perplexity | {held.target_perplexity:.2f} |
| draft perplexity | {held.draft_perplexity:.2f} |
| draft/target greedy next-token agreement | {held.greedy_agreement:.1%} |
| uniform perplexity (for scale) | {run.vocab_size} |

Greedy continuation of `{run.sample_prompt!r}` by the target:

```python
{run.sample_prompt}{run.sample_completion}
```

## Limitations

Tiny and far from converged (a few million training tokens against Chinchilla's ~20 per
parameter): they produce Python-shaped text, not working programs, and greedy decoding falls
into loops quickly (`import os\\n` continues with `import sys` over and over). They exist to
exercise the serving stack (batching, paged KV cache, tensor parallelism, speculative
decoding), not to answer anyone.

## Reproduce

```
{REPRODUCE_COMMAND}
```

Deterministic for a given machine, thread count and library versions; another Python
version has another standard library and so gives other (similar) weights.
"""


def _model_row(model: TrainedModel) -> str:
    r = model.recipe
    return (
        f"| {r.name} | {model.num_params:,} | {r.hidden_size} | {r.num_layers} | {r.num_heads} "
        f"| {r.num_kv_heads} | {r.head_dim} | {r.intermediate_size} | {model.num_file_bytes:,} |"
    )


def _train_row(model: TrainedModel) -> str:
    r, s = model.recipe, model.stats
    return (
        f"| {r.name} | {s.num_steps} | {r.num_tokens_per_step} | {s.num_tokens:,} "
        f"| {r.peak_lr:g} | {r.distill_weight:g} | {s.first_loss:.2f} | {s.final_loss:.2f} "
        f"| {s.elapsed_s / 60:.1f} min |"
    )
