"""An optimisation of padding every text to its batch's longest: texts sorted by length, or packed several to a row;
tests/test_batching.py proves each text's embedding equal to the text embedded alone, tests/test_train_step.py and
tests/test_distill.py packed training equal to padded.

A jitted function compiles once per input shape, so every forward here has one of a bounded set of shapes: rows are
a power of two (up to the batch) and lengths come from tokenizer.LENGTHS. Two plans:

- padded: texts sorted by length, `batch_size` per forward, each row one text padded to the next length in
  LENGTHS. Sorting makes neighbours nearly equal in length.
- packed: several texts share a row of PACK_LENGTHS tokens, each with its own positions (restarting at 0) and a
  block-diagonal attention mask (model.same_text), so each text is computed exactly as if alone. Rows are filled
  best-fit, longest text first, short texts filling the room that long ones leave; a forward holds `tokens // T`
  rows of T tokens. Almost no token is padding, and there are few shapes.

A `Forward` says where each text goes (row, slot, first token); `arrays` builds its numpy inputs. Training
(train.py, distill.py) packs each device's share of a batch alike: `pack_columns`.
"""
import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from minilm.tokenizer import LENGTHS, padded_length

PACK_LENGTHS = tuple(t for t in LENGTHS if t >= 32 and t & (t - 1) == 0)  # packed rows: 32, 64, ..., 512 tokens


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
        """(ids_BT, positions_BT, segments_BT) for token-id sequences ids[i]; segment = slot + 1, 0 is padding."""
        ids_BT = np.full((self.rows, self.length), pad_id, np.int32)
        positions_BT = np.zeros((self.rows, self.length), np.int32)
        segments_BT = np.zeros((self.rows, self.length), np.int32)
        for i, r, s, t in zip(self.index, self.row, self.slot, self.start):
            seq = ids[i]
            n = len(seq)
            ids_BT[r, t:t + n] = seq
            positions_BT[r, t:t + n] = np.arange(n)
            segments_BT[r, t:t + n] = s + 1
        return ids_BT, positions_BT, segments_BT


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


def pack_rows(lengths: list[int], row_lengths: list[int]) -> list[tuple[int, list[int]]]:
    """Best-fit decreasing: each text, longest first, goes into the open row with the least room that still holds
    it (and has a free slot), else opens a row of the shortest length in row_lengths that holds it. A row of T
    tokens holds at most T // 4 texts. Returns (row length, texts) per row."""
    rows: list[tuple[int, list[int]]] = []
    room: list[int] = []  # free tokens of each row
    by_room: list[list[int]] = [[] for _ in range(max(row_lengths) + 1)]  # by_room[k]: open rows with k free
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        r = next((by_room[k].pop() for k in range(n, len(by_room)) if by_room[k]), None)
        if r is None:
            r = len(rows)
            rows.append((next(t for t in row_lengths if n <= t), []))
            room.append(rows[r][0])
        rows[r][1].append(i)
        room[r] -= n
        if len(rows[r][1]) < rows[r][0] // 4:
            by_room[room[r]].append(r)
    return rows


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
    """A Forward of num_rows rows of `length` tokens from rows[r] = the texts of row r (pack_rows), each text
    starting where the one before it in the row ends."""
    index, row, slot, start = [], [], [], []
    for r, texts in enumerate(rows):
        offset = 0
        for s, i in enumerate(texts):
            index.append(i), row.append(r), slot.append(s), start.append(offset)
            offset += lengths[i]
    return Forward(rows=num_rows, length=length, slots=max(1, length // 4), index=np.array(index, int),
                   row=np.array(row, int), slot=np.array(slot, int), start=np.array(start, int))


class Packed(NamedTuple):
    """A packed training batch: each device's C x b texts share R rows of L tokens, positions restarting at 0
    for every text and segment = slot + 1 (0 = padding), so attention stays inside each text (block-diagonal) and
    every text is computed exactly as if alone. Text (c, row r of the batch) is slot where_CB[c, r] of its device's
    pooled [R x N] output. Training texts average ~15 tokens: padded rows are two-thirds padding, packed ones ~5%."""
    ids_RL: np.ndarray | jax.Array  # [devices x R, L]
    positions_RL: np.ndarray | jax.Array
    segments_RL: np.ndarray | jax.Array
    where_CB: np.ndarray | jax.Array  # [C, B]: index into the device's flattened [R * N] slots
    ROW_AXES = (0, 0, 0, 1)  # the axis of each array that is split over devices (parallel.shard_batch)

    def rows(self):
        """(ids, positions, segments) of the packed rows, for models that read token rows (distillation)."""
        return self.ids_RL, self.positions_RL, self.segments_RL


def pack_columns(tokenizer, examples, max_length: int, parts: int, agree=lambda *shape: shape) -> Packed:
    """Examples (tuples of C texts; B rows, `parts` equal slices, one per local device) -> a Packed batch: each
    slice's C x B/parts texts packed best-fit into R rows of L tokens (pack_rows). L: the packing length
    that holds the longest text, at least 64 (short rows keep the block-diagonal attention cheap); R: the most rows
    any slice needs, rounded up to a multiple of 4 (a bounded set of shapes). agree(R, L) -> (R, L): in a
    multi-host run, parallel.agree_max, so that every process builds arrays of one shape."""
    C, B = len(examples[0]), len(examples)
    b = B // parts
    columns = [[e.ids for e in tokenizer.encode_batch([ex[c] for ex in examples], max_length=max_length)]
               for c in range(C)]
    L = padded_length(max(64, *(len(ids) for col in columns for ids in col)), PACK_LENGTHS)
    slices = [[columns[c][d * b + r] for c in range(C) for r in range(b)] for d in range(parts)]  # text c * b + r
    rows = [pack_rows([len(ids) for ids in texts], [L]) for texts in slices]
    R, L = agree(-(-max(len(r) for r in rows) // 4) * 4, L)
    ids, positions, segments = (np.zeros((parts * R, L), np.int32) for _ in range(3))
    where_CB = np.zeros((C, B), np.int32)
    for d, (texts, packed) in enumerate(zip(slices, rows)):
        fwd = packed_forward([members for _, members in packed], [len(ids) for ids in texts], R, L)
        part = slice(d * R, (d + 1) * R)
        ids[part], positions[part], segments[part] = fwd.arrays(texts, tokenizer.pad_id)
        c, r = np.divmod(fwd.index, b)
        where_CB[c, d * b + r] = fwd.row * fwd.slots + fwd.slot
    return Packed(ids, positions, segments, where_CB)
