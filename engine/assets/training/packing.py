"""Documents packed into one token stream, cut into fixed-length training windows.

Every document is encoded with its leading ``<|endoftext|>`` (the tokenizer's post-processor
adds it), so the stream reads ``<eos> doc1 <eos> doc2 ...`` and the model learns both to start
a file after BOS and to end one with EOS. Windows do not mask attention across documents.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerFast


def pack_documents(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    """Encode ``texts`` and concatenate them. Returns token ids: ``[num_tokens]`` int64."""
    # The backend tokenizer encodes in parallel and has no model_max_length warning.
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts))
    return torch.tensor([i for enc in encodings for i in enc.ids], dtype=torch.long)


def iter_train_batches(
    stream: torch.Tensor, seq_len: int, num_seqs_per_batch: int, seed: int
) -> Iterator[torch.Tensor]:
    """Yield shuffled ``[num_seqs_per_batch, seq_len]`` batches forever, epoch after epoch.

    Each epoch starts the windows at a different random offset (< seq_len), so later epochs
    do not repeat the same cuts; the order is fixed by ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    while True:
        offset = int(torch.randint(seq_len, (1,), generator=generator))
        windows = _cut_windows(stream[offset:], seq_len)
        order = torch.randperm(windows.shape[0], generator=generator)
        for start in range(0, len(order) - num_seqs_per_batch + 1, num_seqs_per_batch):
            yield windows[order[start : start + num_seqs_per_batch]]


def eval_windows(stream: torch.Tensor, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The first ``max_tokens`` of ``stream`` as ``[num_windows, seq_len]``, in order."""
    return _cut_windows(stream[:max_tokens], seq_len)


def _cut_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    num_windows = stream.numel() // seq_len
    return stream[: num_windows * seq_len].view(num_windows, seq_len)
