"""How the engine decodes: a step strategy builds each step's input and keeps its own books
around it. The engine runs one loop whatever the strategy: a step yields, per row, the
tokens it accepted (engine.messages.StepOutput), which the engine appends through the stop
checks one by one.

`DecodeStrategy` is plain decoding (one token per row and step) and the interface other
strategies override; speculative decoding (engine.speculative.strategy) feeds several
query tokens per decode row and may accept several. The engine calls, in order:

    start-up: decode_query_lens, init_kv_cache(1), warmup(capture=False),
              kv_bytes_per_token, init_kv_cache(n), warmup(capture=True), calibrate
    a step:   k = num_lookahead_tokens(running) -> the scheduler reserves k slots per
              decode row -> inp = build_input(sched, k) -> execute -> rows appended ->
              on_step_output(sched, out) -> finished rows released -> on_step_end
    any time: release(seq) when a request finishes or is aborted; stats(); shutdown()
"""

from __future__ import annotations

from engine.messages import ModelInput, StepOutput
from engine.model_input import build_model_input
from engine.scheduler import SchedulerOutput
from engine.sequence import Sequence
from engine.shapes import StepShaper


class DecodeStrategy:
    """Plain decoding: every decode row feeds its last token and accepts one."""

    # Query tokens per row of the decode steps to warm.
    decode_query_lens: tuple[int, ...] = (1,)
    # KV cache bytes per token the strategy adds to the target's (a draft model's cache).
    kv_bytes_per_token: int = 0
    # Steps of the strategy's own whose shape was not warmed.
    num_bucket_misses: int = 0

    def __init__(self, shaper: StepShaper):
        self.shaper = shaper

    # -- start-up -----------------------------------------------------------------------
    def init_kv_cache(self, num_blocks: int) -> None:
        """Allocate the strategy's own cache (mirroring the target's blocks)."""

    def warmup(self, capture: bool, graph_kinds: tuple[str, ...]) -> None:
        """Warm the strategy's own step shapes (eagerly, or capturing graphs of graph_kinds)."""

    def calibrate(self, executor) -> None:
        """Measure what the strategy's choices depend on, once the target is warm."""

    # -- per step -----------------------------------------------------------------------
    def num_lookahead_tokens(self, running: list[Sequence]) -> int:
        """Query tokens a decode row may feed past its next one in the coming step: the
        scheduler reserves slots for them where free blocks allow."""
        return 0

    def build_input(self, sched: SchedulerOutput, num_lookahead_tokens: int) -> ModelInput:
        """The step's input: each row feeds its scheduled tokens."""
        return build_model_input(sched, self.shaper)

    def on_step_output(self, sched: SchedulerOutput, out: StepOutput) -> None:
        """Books after the rows took their tokens, before finished requests are released."""

    def on_step_end(self, sched: SchedulerOutput, total_s: float, execute_s: float) -> None:
        """The step took total_s, execute_s of it in the executor."""

    def release(self, seq: Sequence) -> None:
        """seq finished or was aborted: drop what the strategy holds for it."""

    def stats(self) -> dict[str, int | float]:
        """The strategy's fields of EngineStats."""
        return {}

    def shutdown(self) -> None:
        """Free the strategy's own device memory."""
