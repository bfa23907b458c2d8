"""An optimisation of padding every text to its batch's longest: texts sorted by length, or packed several to a row;
tests/test_fast_packing.py proves each text's embedding equal to the text embedded alone. (Training packs its batches
with the book's batch.py; this module plans the forwards of embedding many texts.)

A jitted function compiles once per input shape, so every forward here has one of a bounded set of shapes: rows are
a power of two (up to the batch) and lengths come from tokenizer.LENGTHS. Two plans:

- padded: texts sorted by length, `batch_size` per forward, each row one text padded to the next length in
  LENGTHS. Sorting makes neighbours nearly equal in length.
- packed: several texts share a row of PACK_LENGTHS tokens, each with its own positions (restarting at 0) and a
  block-diagonal attention mask (batch.same_text), so each text is computed exactly as if alone. Rows are filled
  best-fit, longest text first, short texts filling the room that long ones leave; a forward holds `tokens // T`
  rows of T tokens. Almost no token is padding, and there are few shapes.

A `Forward` says where each text goes (row, slot, first token); `arrays` builds its numpy inputs.
"""
import dataclasses

import numpy as np

from minilm.batch import PACK_LENGTHS, pack_rows, placements, write_rows
from minilm.tokenizer import padded_length


def pow2_rows(n: int, most: int) -> int:
    """Rows of a forward holding n rows of data: the next power of two, at most `most` (bounded shapes)."""
    return min(most, 1 << max(n - 1, 0).bit_length())


@dataclasses.dataclass(frozen=True)
class Forward:
    """One forward pass of shape [rows, length] holding texts index[i] at (row[i], slot[i]), tokens from start[i].
    slots: texts per row at most (the pooled output is [rows, slots, dim])."""
    rows: int
    length: int
    slots: int
    index: np.ndarray
    row: np.ndarray
    slot: np.ndarray
    start: np.ndarray

    def arrays(self, ids: list, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids_BT, positions_BT, segments_BT) for token-id sequences ids[i] (batch.write_rows)."""
        return write_rows(ids, self.index, self.row, self.slot, self.start, self.rows, self.length, pad_id)


def plan_padded(lengths: list[int], batch_size: int) -> list[Forward]:
    """batch_size texts per forward, longest first (the slow shapes compile early), one text per row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    forwards = []
    for b in range(0, len(order), batch_size):
        index = np.array(order[b:b + batch_size])
        n = len(index)
        forwards.append(Forward(rows=pow2_rows(n, batch_size), length=padded_length(lengths[index[0]]), slots=1,
                                index=index, row=np.arange(n), slot=np.zeros(n, int), start=np.zeros(n, int)))
    return forwards


def plan_packed(lengths: list[int], tokens: int) -> list[Forward]:
    """Texts packed into rows of PACK_LENGTHS tokens (pack_rows), about `tokens` tokens per forward."""
    top = max(PACK_LENGTHS[0], padded_length(max(lengths, default=0)))  # the row length of the longest texts
    rows = pack_rows(lengths, [t for t in PACK_LENGTHS if t < top] + [top])
    forwards = []
    for T in sorted({t for t, _ in rows}, reverse=True):
        same = [texts for t, texts in rows if t == T]
        per_forward = max(1, tokens // T)
        for b in range(0, len(same), per_forward):
            chunk = same[b:b + per_forward]
            forwards.append(packed_forward(chunk, lengths, pow2_rows(len(chunk), per_forward), T))
    return forwards


def packed_forward(rows: list[list[int]], lengths: list[int], num_rows: int, length: int) -> Forward:
    """A Forward of num_rows rows of `length` tokens from rows[r] = the texts of row r (pack_rows), placed as
    training places them (batch.placements)."""
    index, row, slot, start = placements(rows, lengths)
    return Forward(rows=num_rows, length=length, slots=max(1, length // 4), index=index, row=row, slot=slot,
                   start=start)
