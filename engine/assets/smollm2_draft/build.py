"""Train the layers of SmolLM2's draft by distillation (seeded; CPU only).

Reproduce, from the repository root, with SmolLM2 prepared (``gaudi-serve models prepare``)::

    nice -n 5 .venv/bin/python -m engine.assets.smollm2_draft.build

How long: the shipped layers took 22 min on a 2-core AMD EPYC shared with other jobs (load
average ~4): 2 min scoring the untrained draft, 13 min for the teacher to label 49k tokens,
6.5 min training (240 steps), the rest scoring. What it reaches (``recipe.json``): greedy
agreement with the target on held-out stdlib code 1.4% -> 14.7%; too little for speculation
to pay (see the report in ``engine.assets.smollm2_draft``).

The draft is SmolLM2 cut short, LayerSkip-style: the target's token embedding and tied
head (frozen; copied from the prepared model when the draft is assembled) around
`num_layers` decoder layers initialised from the target's layers `init_layers`, and its
final norm. Those are trained on the Python standard library of the running interpreter
(the corpus of ``engine.assets.training``, held-out files excluded) by regressing the
draft's final normed hidden state (what the shared head reads) onto the target's: the
target labels each token once and the draft trains on the labels for several epochs, so
the target's forward pass, the build's main cost, is paid once per token. Only the trained
layers and the final norm ship, as bf16 (``LAYERS_DIR``); the engine runs them as fp32.
The run is seeded: the same machine, thread count and library versions give the same
weights. Writes ``<out>/layers.safetensors`` and ``<out>/recipe.json`` (the recipe, the
run's figures and the held-out greedy agreement of draft and target).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from engine.assets.smollm2_draft import LAYERS_DIR, LAYERS_FILE, RECIPE_FILE


@dataclass(frozen=True)
class DraftRecipe:
    """What the build trains: which target layers seed the draft's, on how many tokens.

    The teacher labels `num_train_windows` windows of `seq_len` tokens once (its final,
    normed hidden state: what its head reads); the draft then regresses onto those for
    `num_epochs` epochs, so the teacher's cost is paid once per token, not once per epoch.
    """

    init_layers: tuple[int, ...] = (0, 1)
    seq_len: int = 128
    num_train_windows: int = 384
    num_epochs: int = 5
    num_seqs_per_batch: int = 8
    peak_lr: float = 1e-3
    num_warmup_steps: int = 20
    max_grad_norm: float = 1.0
    eval_tokens: int = 4096

    @property
    def num_layers(self) -> int:
        return len(self.init_layers)


def load_teacher(path: Path) -> tuple[LlamaForCausalLM, object]:
    """(model, tokenizer) of the target, fp32, frozen."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval().requires_grad_(False), AutoTokenizer.from_pretrained(path)


def init_draft(teacher: LlamaForCausalLM, recipe: DraftRecipe) -> LlamaForCausalLM:
    """The draft: the teacher's config with `recipe.num_layers` layers, copies of the
    teacher's layers `recipe.init_layers`; embedding, norm and head copied from it."""
    n = teacher.config.num_hidden_layers
    bad = [i for i in recipe.init_layers if not 0 <= i < n]
    if bad or not recipe.init_layers:
        raise ValueError(f"init_layers must be non-empty indices in [0, {n}), got {bad}")
    config = draft_config(teacher.config, recipe.num_layers)
    draft = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    state = {
        name: tensor
        for name, tensor in teacher.state_dict().items()
        if not name.startswith("model.layers.")
    }
    for new, old in enumerate(recipe.init_layers):
        prefix = f"model.layers.{old}."
        for name, tensor in teacher.state_dict().items():
            if name.startswith(prefix):
                state[f"model.layers.{new}." + name[len(prefix) :]] = tensor
    draft.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    draft.tie_weights()
    return draft


def draft_config(target_config, num_layers: int):
    """The target's config with `num_layers` decoder layers."""
    config = target_config.__class__.from_dict(target_config.to_dict())
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]
    return config


def trainable_names(num_layers: int) -> list[str]:
    """The draft's tensors the build trains and ships: its layers and its final norm."""
    return [f"model.layers.{i}." for i in range(num_layers)] + ["model.norm."]


def token_windows(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """The texts encoded (each led by EOS, as a document boundary), concatenated and cut
    into `[num_windows, seq_len]` windows, in order."""
    eos = tokenizer.eos_token_id
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    stream = torch.tensor([i for enc in encodings for i in [eos, *enc.ids]], dtype=torch.long)
    num = stream.numel() // seq_len
    return stream[: num * seq_len].view(num, seq_len)


@torch.inference_mode()
def teacher_hidden(teacher: LlamaForCausalLM, windows: torch.Tensor) -> torch.Tensor:
    """The teacher's final normed hidden state of every position: [windows, seq, hidden]."""
    return torch.cat([teacher.model(input_ids=b).last_hidden_state for b in windows.split(4)])


def train(
    draft: LlamaForCausalLM,
    windows: torch.Tensor,
    targets: torch.Tensor,
    recipe: DraftRecipe,
    seed: int,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train `draft`'s layers and final norm in place so that its final normed hidden state
    matches `targets` (the teacher's, [windows, seq, hidden]); the shared head then turns
    both into the same logits. Loss: squared error relative to the targets' mean square.
    Returns loss figures."""
    generator = torch.Generator().manual_seed(seed)
    prefixes = tuple(trainable_names(recipe.num_layers))
    params = []
    for name, param in draft.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            params.append(param)
    optimizer = torch.optim.AdamW(params, lr=recipe.peak_lr, betas=(0.9, 0.95), weight_decay=0.0)
    scale = targets.pow(2).mean()
    draft.train()
    losses: list[float] = []
    started = time.perf_counter()
    b = recipe.num_seqs_per_batch
    steps_per_epoch = windows.shape[0] // b
    max_steps = recipe.num_epochs * steps_per_epoch
    for step in range(max_steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(windows.shape[0], generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe, max_steps)
        rows = order[(step % steps_per_epoch) * b :][:b]
        hidden = draft.model(input_ids=windows[rows]).last_hidden_state
        loss = (hidden - targets[rows]).pow(2).mean() / scale
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == max_steps - 1:
            log(
                f"step {step + 1}/{max_steps} relative mse {losses[-1]:.4f} "
                f"{time.perf_counter() - started:.0f}s"
            )
    draft.eval().requires_grad_(False)
    tail = losses[-steps_per_epoch:]
    return {
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "train_s": time.perf_counter() - started,
    }


@torch.inference_mode()
def greedy_agreement(teacher, draft, windows: torch.Tensor) -> float:
    """The fraction of positions where draft and teacher pick the same next token."""
    agree = total = 0
    for batch in windows.split(4):
        a = teacher(input_ids=batch).logits.argmax(-1)
        b = draft(input_ids=batch).logits.argmax(-1)
        agree += int((a == b).sum())
        total += a.numel()
    return agree / total


def shipped_tensors(draft: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The trained tensors, bf16, as the shipped file holds them."""
    prefixes = tuple(trainable_names(draft.config.num_hidden_layers))
    return {
        name: tensor.detach().to(torch.bfloat16).contiguous()
        for name, tensor in draft.state_dict().items()
        if name.startswith(prefixes)
    }


def build(
    teacher_path: Path,
    out: Path,
    recipe: DraftRecipe,
    seed: int,
    texts=None,
    held_out=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train and write `out`/layers.safetensors and `out`/recipe.json; return the facts.
    `texts` / `held_out`: the training and held-out texts (default: the stdlib corpus)."""
    torch.manual_seed(seed)
    teacher, tokenizer = load_teacher(teacher_path)
    if texts is None:
        from engine.assets.training.corpus import load_corpus

        corpus = load_corpus()
        texts = [f.text for f in corpus.train]
        held_out = [f.text for f in corpus.held_out]
    windows = token_windows(tokenizer, texts, recipe.seq_len)
    eval_windows = token_windows(tokenizer, held_out, recipe.seq_len)
    eval_windows = eval_windows[: max(1, recipe.eval_tokens // recipe.seq_len)]
    log(f"{windows.numel():,} corpus tokens, {eval_windows.numel():,} held-out tokens")
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(windows.shape[0], generator=generator)[: recipe.num_train_windows]
    windows = windows[picked.sort().values]
    draft = init_draft(teacher, recipe)
    before = greedy_agreement(teacher, draft, eval_windows)
    log(f"held-out greedy agreement before training: {before:.3f}")
    labelled = time.perf_counter()
    targets = teacher_hidden(teacher, windows)
    label_s = time.perf_counter() - labelled
    log(f"teacher labelled {windows.numel():,} tokens in {label_s:.0f}s")
    figures = train(draft, windows, targets, recipe, seed, log=log) | {"teacher_s": label_s}
    tensors = shipped_tensors(draft)
    for name, tensor in tensors.items():  # score what ships: bf16 rounded, run as fp32
        draft.state_dict()[name].copy_(tensor.float())
    after = greedy_agreement(teacher, draft, eval_windows)
    log(f"held-out greedy agreement after training: {after:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / LAYERS_FILE), metadata={"format": "pt"})
    facts = {
        "recipe": asdict(recipe),
        "seed": seed,
        "num_layers": recipe.num_layers,
        "num_shipped_parameters": sum(t.numel() for t in tensors.values()),
        "num_draft_parameters": draft.num_parameters(),
        "held_out_greedy_agreement_before": round(before, 4),
        "held_out_greedy_agreement": round(after, 4),
        "num_train_tokens": windows.numel(),
        **{k: round(v, 4) for k, v in figures.items()},
        "environment": f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), {platform.machine()}",
    }
    (out / RECIPE_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    for path in out.iterdir():
        path.chmod(0o644)
    return facts


def _lr(step: int, recipe: DraftRecipe, max_steps: int) -> float:
    if step < recipe.num_warmup_steps:
        return recipe.peak_lr * (step + 1) / recipe.num_warmup_steps
    span = max(1, max_steps - recipe.num_warmup_steps)
    progress = (step - recipe.num_warmup_steps) / span
    return recipe.peak_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> int:
    from engine.assets import DEFAULT_MODEL_NAME, default_model_path

    parser = argparse.ArgumentParser(prog="python -m engine.assets.smollm2_draft.build")
    parser.add_argument("--target", type=Path, default=None, help="default: prepared SmolLM2")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / LAYERS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train-windows", type=int, default=DraftRecipe.num_train_windows)
    parser.add_argument("--num-epochs", type=int, default=DraftRecipe.num_epochs)
    parser.add_argument("--init-layers", default="0,1", help="comma list of target layers")
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("num_train_windows", "num_epochs"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    torch.set_num_threads(args.num_threads)
    recipe = DraftRecipe(
        init_layers=tuple(int(i) for i in args.init_layers.split(",")),
        num_train_windows=args.num_train_windows,
        num_epochs=args.num_epochs,
    )
    target = args.target or default_model_path(DEFAULT_MODEL_NAME)
    facts = build(target, args.out, recipe, args.seed, log=_log)
    _log(f"wrote {args.out}: {json.dumps(facts)}")
    return 0


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
