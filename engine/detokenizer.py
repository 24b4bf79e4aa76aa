"""Incremental detokenization with stop strings.

Decoding only the new token breaks multi-byte characters and byte-level BPE merges, so we
decode a short window (a few tokens of context plus the new ones) and emit the text that
the new tokens add, holding back while the window ends in an incomplete character
(U+FFFD). Stop strings are searched in the accumulated text; while a request runs, the
last len(longest stop) - 1 characters are held back so a stop string never leaks.
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.max_stop_len = max((len(s) for s in stop), default=0)
        self.prefix_offset = max(len(prompt_token_ids) - CONTEXT_TOKENS, 0)
        self.read_offset = len(prompt_token_ids)
        self.text = ""
        self.stopped = False
        self.matched_stop: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def update(self, all_token_ids: list[int]) -> None:
        """Take in the sequence's newest token(s); sets `stopped` on a stop-string match."""
        if self.tokenizer is None or self.stopped:
            return
        prefix = self._decode(all_token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(all_token_ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT_CHAR):
            return
        start = len(self.text)
        self.text += full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(all_token_ids)
        if self.stop:
            self._check_stop(start)

    def _check_stop(self, new_text_start: int) -> None:
        search_from = max(new_text_start - self.max_stop_len + 1, 0)
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            index, self.matched_stop = min(hits)
            self.text = self.text[:index]
            self.stopped = True

    def visible_text(self, finished: bool) -> str:
        """Text safe to show now: without a possible stop-string prefix at the end."""
        if finished or not self.max_stop_len:
            return self.text
        return self.text[: max(len(self.text) - self.max_stop_len + 1, 0)]

    def flush(self, all_token_ids: list[int]) -> None:
        """At finish: emit what an incomplete trailing character held back."""
        if self.tokenizer is None or self.stopped:
            return
        tail = self._decode(all_token_ids[self.prefix_offset :])
        prefix = self._decode(all_token_ids[self.prefix_offset : self.read_offset])
        if len(tail) > len(prefix):
            start = len(self.text)
            self.text += tail[len(prefix) :]
            self.read_offset = len(all_token_ids)
            if self.stop:
                self._check_stop(start)
