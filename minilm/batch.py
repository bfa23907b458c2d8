"""A training batch: C columns of texts (anchor, positive[, negative]; distillation has one) and B rows, made into
token arrays, and the model's token states pooled back into one vector per text.

- padded: one text per row, every column padded to one length: ids and mask [C, B, T].
- packed (the default): several texts share a row, each with its own positions (restarting at 0) and a
  block-diagonal attention mask (`same_text`), so each text is computed exactly as if alone. Training texts
  average ~15 tokens: padded rows are two-thirds padding, packed ones ~5%. tests/test_train_step.py and
  tests/test_distill.py prove packed training equal to padded.

Each device's share of the batch is packed into rows of its own (`pack_columns`); parallel.shard_batch splits the
arrays over the devices along ROW_AXES.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from minilm.model import mean_pool
from minilm.tokenizer import LENGTHS, pad_batch, padded_length

PACK_LENGTHS = tuple(t for t in LENGTHS if t >= 32 and t & (t - 1) == 0)  # packed rows: 32, 64, ..., 512 tokens


class Padded(NamedTuple):
    """One text per row, every column padded to one length: ids and mask [C, B, T]."""
    ids_CBT: np.ndarray | jax.Array
    mask_CBT: np.ndarray | jax.Array
    ROW_AXES = (1, 1)  # the axis of each array that is split over devices (parallel.shard_batch)

    def rows(self):
        """(ids, positions, segments) [C*B, T]: the rows as packed rows of one text each (segment 1, or 0 = pad)."""
        C, B, T = self.ids_CBT.shape
        ids_NT, mask_NT = self.ids_CBT.reshape(C * B, T), self.mask_CBT.reshape(C * B, T)
        return ids_NT, jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (C * B, T)), mask_NT


def pad_columns(tokenizer, examples, max_length: int) -> Padded:
    """Examples (tuples of C texts) -> ids, mask [C, B, T] int32, every column padded to one length."""
    columns = [tokenizer.encode_batch([ex[c] for ex in examples], max_length=max_length)
               for c in range(len(examples[0]))]
    length = padded_length(max(len(e.ids) for col in columns for e in col))
    batches = [pad_batch(col, length=length, pad_id=tokenizer.pad_id) for col in columns]
    return Padded(np.stack([b.ids_BT for b in batches]), np.stack([b.mask_BT for b in batches]))


class Packed(NamedTuple):
    """A packed training batch: each device's C x b texts share R rows of L tokens, positions restarting at 0 for
    every text and segment = slot + 1 (0 = padding). Text (c, row r of the batch) is slot where_CB[c, r] of its
    device's pooled [R x N] output, N = L // 4 slots a row."""
    ids_RL: np.ndarray | jax.Array  # [devices x R, L]
    positions_RL: np.ndarray | jax.Array
    segments_RL: np.ndarray | jax.Array
    where_CB: np.ndarray | jax.Array  # [C, B]: index into the device's flattened [R * N] slots
    ROW_AXES = (0, 0, 0, 1)  # the axis of each array that is split over devices (parallel.shard_batch)

    def rows(self):
        """(ids, positions, segments) of the packed rows, for models that read token rows (distillation)."""
        return self.ids_RL, self.positions_RL, self.segments_RL


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


def placements(rows: list[list[int]], lengths: list[int]) -> tuple[np.ndarray, ...]:
    """(index, row, slot, start) of every text of rows[r] (pack_rows' texts of row r): text index[i] sits in row
    row[i], slot slot[i], from token start[i], each text starting where the one before it in its row ends."""
    index, row, slot, start = [], [], [], []
    for r, texts in enumerate(rows):
        offset = 0
        for s, i in enumerate(texts):
            index.append(i), row.append(r), slot.append(s), start.append(offset)
            offset += lengths[i]
    return tuple(np.array(x, int) for x in (index, row, slot, start))


def write_rows(seqs: list, index, row, slot, start, num_rows: int, length: int, pad_id: int):
    """(ids, positions, segments) [num_rows, length] int32 with token sequence seqs[index[i]] at row[i] from
    start[i]; positions restart at 0 for each text, segment = slot + 1 (0 is padding)."""
    ids = np.full((num_rows, length), pad_id, np.int32)
    positions, segments = np.zeros((num_rows, length), np.int32), np.zeros((num_rows, length), np.int32)
    for i, r, s, t in zip(index, row, slot, start):
        n = len(seqs[i])
        ids[r, t:t + n], positions[r, t:t + n], segments[r, t:t + n] = seqs[i], np.arange(n), s + 1
    return ids, positions, segments


def pack_columns(tokenizer, examples, max_length: int, parts: int, agree=lambda *shape: shape) -> Packed:
    """Examples (tuples of C texts; B rows, `parts` equal slices, one per local device) -> a Packed batch: each
    slice's C x B/parts texts packed best-fit into R rows of L tokens (pack_rows, placements). L: the packing length
    that holds the longest text, at least 64 (short rows keep the block-diagonal attention cheap); R: the most rows
    any slice needs, rounded up to a multiple of 4 (a bounded set of shapes). agree(R, L) -> (R, L): in a multi-host
    run, parallel.agree_max, so that every process builds arrays of one shape."""
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
        index, row, slot, start = placements([members for _, members in packed], [len(ids) for ids in texts])
        part = slice(d * R, (d + 1) * R)
        ids[part], positions[part], segments[part] = write_rows(texts, index, row, slot, start, R, L,
                                                                tokenizer.pad_id)
        c, k = np.divmod(index, b)
        where_CB[c, d * b + k] = row * (L // 4) + slot
    return Packed(ids, positions, segments, where_CB)


def same_text(segments_BT: jax.Array) -> jax.Array:
    """[B,1,T,S] bool, the block-diagonal mask of packed rows: key s is a real token of query t's text. Several texts
    share a row as segments 1, 2, ... (0 = padding); a padded batch passes its mask (one text a row). A padding
    query sees no key at all. Packed attention (model.encode) and the relation KL (relations.py) both mask with it."""
    return (segments_BT[:, None, :, None] == segments_BT[:, None, None, :]) & (segments_BT[:, None, None, :] > 0)


def segment_members(segments_BT: jax.Array, num_segments: int) -> jax.Array:
    """[B, T, N] bool: token t of row b belongs to segment n+1 of the row."""
    return segments_BT[..., None] == jnp.arange(1, num_segments + 1)


def pool_segments(h_BTD: jax.Array, segments_BT: jax.Array, num_segments: int) -> jax.Array:
    """Packed rows -> one vector per text: emb_BND[b, n] is the mean of segment n+1's token states in row b (zeros
    for an empty slot), model.mean_pool as a [B, T, N] one-hot matmul."""
    member_BTN = segment_members(segments_BT, num_segments).astype(h_BTD.dtype)
    summed_BND = jnp.einsum("BTN,BTD->BND", member_BTN, h_BTD)
    return summed_BND / jnp.maximum(member_BTN.sum(axis=1), 1e-9)[..., None]


def texts_of(slots_RND: jax.Array, batch) -> jax.Array:
    """A packed batch's pooled slots [R, N, D] -> its texts' vectors [C, b, D], in the batch's text order."""
    C, b = batch.where_CB.shape
    R, N = slots_RND.shape[:2]
    return slots_RND.reshape(R * N, -1)[batch.where_CB.reshape(-1)].reshape(C, b, -1)


def pool_columns(h_BTD, batch) -> jax.Array:
    """The token states of a batch's rows -> one mean-pooled vector per text [C, b, D], in the batch's text order
    (not normalised). Padded: each row is a text (model.mean_pool). Packed: each row's slots pooled (pool_segments),
    then the texts picked out of the device's [R x N] slots by where_CB. Other poolings: st/heads.py."""
    if isinstance(batch, Padded):
        C, b, T = batch.ids_CBT.shape
        return mean_pool(h_BTD, batch.mask_CBT.reshape(C * b, T)).reshape(C, b, -1)
    L = batch.ids_RL.shape[1]
    return texts_of(pool_segments(h_BTD, batch.segments_RL, L // 4), batch)
