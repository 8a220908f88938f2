"""A byte-level tokenizer: UTF-8 bytes 0..255 plus PAD, BOS and EOS, so text needs nothing downloaded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255; PAD = 256, BOS = 257, EOS = 258; vocab_size = 259.

    encode(texts, length=None) -> (B, P) int64: BOS, the bytes, EOS, right-padded with PAD to the
    longest text (or cut/padded to `length`). decode(ids (B, P) or (P,)) -> list[str]: bytes up to the
    first EOS, specials dropped, invalid UTF-8 replaced.
    """

    PAD, BOS, EOS = 256, 257, 258
    vocab_size = 259

    def encode(self, texts: Sequence[str] | str, length: int | None = None) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a str or a sequence of str")
        rows = [[self.BOS, *t.encode("utf-8"), self.EOS] for t in texts]
        if length is not None and length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        width = length if length is not None else max((len(r) for r in rows), default=0)
        padded = [(r + [self.PAD] * width)[:width] for r in rows]
        return torch.tensor(padded, dtype=torch.int64).reshape(len(rows), width)

    def decode(self, ids: Tensor) -> list[str]:
        if not isinstance(ids, Tensor) or ids.dim() not in (1, 2) or ids.is_floating_point():
            raise TypeError("ids must be a 1-D or 2-D integer tensor")
        texts = []
        for row in ids.reshape(-1, ids.shape[-1]).tolist():
            row = row[: row.index(self.EOS)] if self.EOS in row else row
            texts.append(bytes(i for i in row if 0 <= i < 256).decode("utf-8", errors="replace"))
        return texts
