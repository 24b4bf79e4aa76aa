"""GenerationChunk and its tokens cross the handle pickled by their own __reduce__: every
field must come back."""

from __future__ import annotations

import dataclasses
import pickle

from deployments.generation import GeneratedToken, GenerationChunk, TopToken


def test_chunks_pickle_with_every_field():
    top = TopToken(7, "b", -1.5)
    token = GeneratedToken(5, "a", True, -0.25, (top,))
    chunk = GenerationChunk("r-1", "a", (token,), 4, 2, 3, "stop", "STOP")
    for value in (top, token, chunk):
        # every field set to a value that differs from its default
        assert all(getattr(value, f.name) != f.default for f in dataclasses.fields(value))
        assert pickle.loads(pickle.dumps(value)) == value
    plain = GenerationChunk("r-2", "", (GeneratedToken(1, None, False),), 4, 0, 1)
    assert pickle.loads(pickle.dumps(plain)) == plain
