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


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_and_window_agree_on_token_id_prompts(text, tiny_tokenizer_dir):
    """Prompts of token ids may end inside a character: such a request keeps the window
    decoder, and either way the pieces handed out add up to the full decode."""
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = tok.encode(text, add_special_tokens=False)
    for cut in range(1, min(len(ids), 8)):
        prompt, generated = ids[:cut], ids[cut:]
        detok = IncrementalDetokenizer(tok, prompt, stop=[])
        seen, taken = list(prompt), []
        for t in generated:
            seen.append(t)
            detok.update(seen)
            taken.append(detok.take_visible(finished=False))
        detok.flush(seen)
        taken.append(detok.take_visible(finished=True))
        full = tok.decode(ids, skip_special_tokens=True)
        assert "".join(taken) == detok.text
        assert full.endswith(detok.text) or "\ufffd" in tok.decode(prompt)


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


def test_take_visible_hands_out_each_character_once(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = tok.encode("alpha beta STOP gamma")
    detok = IncrementalDetokenizer(tok, [], stop=["STOP", "never"])
    seen, taken = [], ""
    for t in ids:
        seen.append(t)
        detok.update(seen)
        taken += detok.take_visible(finished=detok.stopped)
        assert "S" not in taken
        if detok.stopped:
            break
    assert taken == "alpha beta " and detok.matched_stop == "STOP"
