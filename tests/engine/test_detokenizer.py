from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engine.detokenizer import IncrementalDetokenizer

TEXTS = ["héllo wörld 日本語 ✓ emoji 🙂 done", "def f(x):\n    return x  # ✓✓", "🙂🙂🙂 a"]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_equals_full_decode(text, tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    prompt = tok.encode("x = ")
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, prompt, stop=[])
    seen = prompt[:]
    pieces = []
    for t in ids:
        seen.append(t)
        before = detok.text
        detok.update(seen)
        pieces.append(detok.text[len(before) :])
        assert "\ufffd" not in detok.text  # never a broken multi-byte character
    detok.flush(seen)
    assert detok.text == tok.decode(ids) == text


def test_stop_string_cut_and_hold_back(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = tok.encode("alpha beta STOP gamma")
    detok = IncrementalDetokenizer(tok, [], stop=["STOP"])
    seen = []
    for t in ids:
        seen.append(t)
        detok.update(seen)
        assert "S" not in detok.visible_text(finished=False)  # held back, never leaked
        if detok.stopped:
            break
    assert detok.stopped and detok.text == "alpha beta "
