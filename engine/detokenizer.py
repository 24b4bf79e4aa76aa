"""Incremental detokenization with stop strings.

Decoding only the new token breaks multi-byte characters and byte-level BPE merges. With a
`tokenizers`-backed tokenizer we feed each token to its streaming decoder
(`tokenizers.decoders.DecodeStream`, primed with the prompt's last tokens), which returns
the text a token adds, or None while the bytes so far end inside a character: ~1.6 us a
token against ~6.0 us for the window below (measured for [serve-path]; see the issue's note).
Other tokenizers decode a short window (a few tokens of context plus the new ones) and
emit the text the new tokens add, holding back while the window ends in an incomplete
character (U+FFFD).

Stop strings are searched in the accumulated text; while a request runs, the last
len(longest stop) - 1 characters are held back so a stop string never leaks.
`take_visible()` hands out only what was not handed out before (a step's text delta).
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"
CONTEXT_TOKENS = 5


def _stream_decoder(tokenizer, context_ids: list[int]):
    """A DecodeStream over `tokenizer`'s Rust backend, primed with `context_ids`; None
    when the tokenizer has no such backend (a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None
    return backend, DecodeStream(ids=context_ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    """Text of one request's generated tokens, fed as they come (`update`)."""

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.max_stop_len = max((len(s) for s in stop), default=0)
        self.prefix_offset = max(len(prompt_token_ids) - CONTEXT_TOKENS, 0)
        self.read_offset = len(prompt_token_ids)  # tokens whose text is in self.text
        self.num_fed = len(prompt_token_ids)  # tokens given to the decoder
        self.text = ""
        self.num_taken = 0  # characters of text already handed out by take_visible
        self.stopped = False
        self.matched_stop: str | None = None
        self._stream = None
        context = prompt_token_ids[self.prefix_offset :]
        # A prompt of token ids may end inside a character; the stream would then emit
        # the context's own text: such a request keeps the window.
        if tokenizer is not None and not self._decode(context).endswith(REPLACEMENT_CHAR):
            self._stream = _stream_decoder(tokenizer, context)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def update(self, all_token_ids: list[int]) -> None:
        """Take in the sequence's newest token(s); sets `stopped` on a stop-string match."""
        if self.tokenizer is None or self.stopped:
            return
        start = len(self.text)
        if self._stream is not None:
            backend, stream = self._stream
            for i in range(self.num_fed, len(all_token_ids)):
                piece = stream.step(backend, all_token_ids[i])
                if piece is not None:
                    self.text += piece
                    self.prefix_offset, self.read_offset = self.read_offset, i + 1
            self.num_fed = len(all_token_ids)
        else:
            prefix = self._decode(all_token_ids[self.prefix_offset : self.read_offset])
            full = self._decode(all_token_ids[self.prefix_offset :])
            if len(full) <= len(prefix) or full.endswith(REPLACEMENT_CHAR):
                return
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(all_token_ids)
        if self.stop and len(self.text) > start:
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
        return self.text[: self._num_visible(finished)]

    def _num_visible(self, finished: bool) -> int:
        if finished or self.stopped or not self.max_stop_len:
            return len(self.text)
        return max(len(self.text) - self.max_stop_len + 1, 0)

    def take_visible(self, finished: bool) -> str:
        """The visible text not handed out before (the text a step adds to the stream).
        NOTE: the held-back tail is never handed out, so a stop string cut from the text
        later only ever removes characters not yet taken."""
        end = self._num_visible(finished)
        if end <= self.num_taken:
            return ""
        piece = self.text[self.num_taken : end]
        self.num_taken = end
        return piece

    def flush(self, all_token_ids: list[int]) -> None:
        """At finish: emit what an incomplete trailing character held back (as U+FFFD)."""
        if self.tokenizer is None or self.stopped or self.read_offset >= len(all_token_ids):
            return
        tail = self._decode(all_token_ids[self.prefix_offset :])
        prefix = self._decode(all_token_ids[self.prefix_offset : self.read_offset])
        if len(tail) > len(prefix):
            start = len(self.text)
            self.text += tail[len(prefix) :]
            self.read_offset = len(all_token_ids)
            if self.stop:
                self._check_stop(start)
