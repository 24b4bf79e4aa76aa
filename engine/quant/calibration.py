"""Default calibration prompts for the FP8 measurement (`gaudi-serve quantize`): short,
varied text (chat, prose, code, numbers) so every Linear sees typical activation ranges.
A real deployment should pass prompts like its own traffic (`--prompts FILE`)."""

from __future__ import annotations

from pathlib import Path

CALIBRATION_PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "Translate to German: The weather is nice today and we are going for a walk.",
    "def quicksort(items):\n    if len(items) <= 1:\n        return items\n",
    "List five uses of a paperclip, numbered 1 to 5.",
    "Explain how a hash table handles collisions.",
    "The quarterly revenue was $4.2 million, up 12% from $3.75 million. Compute the growth.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    "Once upon a time, in a village at the edge of a forest, there lived",
    "Give a JSON object with the keys 'id', 'name' and 'tags' for a sample user.",
    "Why is the sky blue? Explain it to a ten-year-old.",
    "class LRUCache:\n    def __init__(self, capacity: int):\n",
    "Write a haiku about autumn leaves.",
    "What are the main differences between TCP and UDP?",
    "Solve for x: 3x + 7 = 22. Show each step.",
)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a text file; ValueError when there is none."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {str(path)!r} holds no prompt (one per non-empty line)")
    return prompts
