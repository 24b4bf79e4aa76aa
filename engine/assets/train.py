"""Train the bundled default models ``pycoder`` and ``pycoder-draft`` from scratch.

Reproduce, from the repository root, CPU only::

    nice -n 5 .venv/bin/python -m engine.assets.train --out engine/assets

How long: the bundled weights took 46 min (target 31, draft 14, the rest under a minute) on
a 2-core AMD EPYC that other jobs kept busy (load average 5-10). Step timings taken on the
same machine put an idle run at roughly 20-25 min; ``--num-threads 2`` is faster again on an
idle machine but changes the weights slightly (another float summation order).

It reads the Python standard library of the running interpreter (no download), trains the
shared byte-level BPE tokenizer, then the target and the draft (the draft distilled from the
target), reloads both from disk to score them on the held-out files, and writes
``<out>/pycoder/``, ``<out>/pycoder-draft/`` and ``<out>/MODEL_CARD.md``. The run is seeded:
the same machine, thread count and library versions give the same weights.

A quick smoke run (seconds; its weights are useless, so write them elsewhere)::

    .venv/bin/python -m engine.assets.train --out /tmp/pycoder-smoke --max-steps 5
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import shutil
import time

import torch
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from engine.assets.training.corpus import load_corpus
from engine.assets.training.evaluate import evaluate_held_out
from engine.assets.training.loop import TrainStats, train_model
from engine.assets.training.model_card import TrainedModel, TrainingRun, render_model_card
from engine.assets.training.packing import eval_windows, iter_train_batches, pack_documents
from engine.assets.training.recipes import DRAFT, SEQ_LEN_TOKENS, TARGET, ModelRecipe
from engine.assets.training.tokenizer import save_tokenizer, train_tokenizer

SAMPLE_PROMPT = "def fibonacci(n):"
PRECISIONS = ("bf16-autocast", "fp32")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.num_threads)
    started = time.perf_counter()
    corpus = load_corpus()
    train_texts = [f.text for f in corpus.train]
    _log(f"corpus: {len(corpus.train)} train files, {len(corpus.held_out)} held-out files")

    tokenizer_started = time.perf_counter()
    tokenizer = train_tokenizer(train_texts)
    tokenizer_s = time.perf_counter() - tokenizer_started
    train_stream = pack_documents(tokenizer, train_texts)
    held_out_stream = pack_documents(tokenizer, [f.text for f in corpus.held_out])
    _log(f"tokens: {train_stream.numel():,} train, {held_out_stream.numel():,} held out")

    is_bf16 = args.precision == "bf16-autocast"
    target, target_stats = _train(TARGET, tokenizer, train_stream, args, is_bf16, teacher=None)
    target_dir = _save(target, tokenizer, args.out / TARGET.name)
    draft, draft_stats = _train(DRAFT, tokenizer, train_stream, args, is_bf16, teacher=target)
    draft_dir = _save(draft, tokenizer, args.out / DRAFT.name)

    # Score the saved files, not the in-memory models, so a bad save shows up here.
    target = LlamaForCausalLM.from_pretrained(target_dir).eval()
    draft = LlamaForCausalLM.from_pretrained(draft_dir).eval()
    held_out = evaluate_held_out(
        target, draft, eval_windows(held_out_stream, SEQ_LEN_TOKENS, args.eval_tokens)
    )
    _log(f"held out: {held_out}")
    run = TrainingRun(
        target=_describe(target, target_dir, TARGET, target_stats),
        draft=_describe(draft, draft_dir, DRAFT, draft_stats),
        held_out=held_out,
        environment=(
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"{args.num_threads} torch thread(s), {platform.machine()}"
        ),
        precision=f"{args.precision} (fp32 master weights and optimiser state)",
        seed=args.seed,
        num_train_files=len(corpus.train),
        num_train_bytes=corpus.num_train_bytes,
        num_train_tokens=train_stream.numel(),
        num_held_out_files=len(corpus.held_out),
        vocab_size=len(tokenizer),
        tokenizer_s=tokenizer_s,
        total_s=time.perf_counter() - started,
        sample_prompt=SAMPLE_PROMPT,
        sample_completion=_greedy_completion(target, tokenizer, SAMPLE_PROMPT),
    )
    (args.out / "MODEL_CARD.md").write_text(render_model_card(run))
    _log(f"done in {run.total_s / 60:.1f} min; wrote {args.out}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.assets.train", description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("engine/assets"))
    parser.add_argument("--max-steps", type=int, default=None, help="cap both models' steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0])
    parser.add_argument("--eval-tokens", type=int, default=100_000)
    parser.add_argument(
        "--num-threads",
        type=int,
        default=1,
        help="torch threads; 1 by default because on a shared machine 2 OpenMP threads stall "
        "each other whenever another process takes a core (measured 4.5 s vs 0.8 s a step)",
    )
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    return args


def _train(
    recipe: ModelRecipe,
    tokenizer: PreTrainedTokenizerFast,
    train_stream: torch.Tensor,
    args: argparse.Namespace,
    is_bf16: bool,
    teacher: LlamaForCausalLM | None,
) -> tuple[LlamaForCausalLM, TrainStats]:
    torch.manual_seed(args.seed)
    config = recipe.build_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    max_steps = min(recipe.max_steps, args.max_steps or recipe.max_steps)
    batches = iter_train_batches(
        train_stream, SEQ_LEN_TOKENS, recipe.num_seqs_per_batch, seed=args.seed
    )
    _log(f"{recipe.name}: {model.num_parameters():,} params, {max_steps} steps")
    stats = train_model(model, batches, recipe, max_steps, is_bf16, teacher=teacher, log=_log)
    return model, stats


def _save(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, model_dir: pathlib.Path
) -> pathlib.Path:
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save_pretrained(model_dir)
    save_tokenizer(tokenizer, model_dir)
    for path in model_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; installed files must be world-readable
    return model_dir


def _describe(
    model: LlamaForCausalLM, model_dir: pathlib.Path, recipe: ModelRecipe, stats: TrainStats
) -> TrainedModel:
    return TrainedModel(
        recipe=recipe,
        num_params=model.num_parameters(),
        num_file_bytes=(model_dir / "model.safetensors").stat().st_size,
        stats=stats,
    )


@torch.inference_mode()
def _greedy_completion(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str
) -> str:
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    output = model.generate(input_ids, max_new_tokens=48, do_sample=False)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
