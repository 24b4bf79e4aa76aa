"""The step's message types sit in a leaf module: the sampler, the runner and a TP rank
use them without importing the scheduler or the builders (engine.model_input)."""

from __future__ import annotations

import subprocess
import sys


def imported_engine_modules(statement: str) -> set[str]:
    names = "' '.join(m for m in sys.modules if m.startswith('engine'))"
    code = f"import sys; {statement}; print({names})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_messages_import_no_other_engine_module():
    assert imported_engine_modules("import engine.messages") == {"engine", "engine.messages"}


def test_sampler_and_runner_do_not_import_the_scheduler_or_speculation():
    modules = imported_engine_modules("import engine.sampler, engine.model_runner")
    assert "engine.scheduler" not in modules
    assert "engine.model_input" not in modules
    assert not any(
        m.startswith("engine.speculative.") and m != "engine.speculative.config" for m in modules
    )
