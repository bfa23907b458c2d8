"""An optimisation of the plain path (model.embed, with the folder's head: st/heads.py embed): the same embeddings,
computed with little padding and few compiled shapes; tests/test_fast_path.py proves them equal,
tests/test_fast_packing.py each text alone. docs/fast-path.md explains each step and what it was measured to buy.

Planning the forwards. A jitted function compiles once per input shape, so every forward has one of a bounded set of
shapes: rows are a power of two (up to the batch) and lengths come from tokenizer.LENGTHS. Two plans:
- packed (the default): several texts share a row of PACK_LENGTHS tokens, each with its own positions (restarting
  at 0) and a block-diagonal attention mask (batch.same_text), so each text is computed exactly as if alone. Rows
  are filled best-fit, longest text first, short texts filling the room that long ones leave (batch.pack_rows, as
  training packs its batches); a forward holds `tokens // T` rows of T tokens. Almost no token is padding.
- padded: texts sorted by length, `batch_size` per forward, each row one text padded to the next length in
  LENGTHS. Sorting makes neighbours nearly equal in length.
A `Forward` says where each text goes (row, slot, first token); `arrays` builds its numpy inputs.

Running them. Dispatch is asynchronous: the next forward is built while the device computes this one, and results
are collected one forward behind. `embed_stream` embeds an iterable chunk by chunk, so memory stays flat however
long the input (embed.py). The compiler options and the persistent compilation cache come from fast/xla.py; dtype
"bfloat16" computes the encoder in bfloat16 (LayerNorm, softmax and pooling stay float32).
"""
import collections
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from minilm.batch import PACK_LENGTHS, pack_rows, placements, same_text, write_rows
from minilm.fast import xla
from minilm.model import encode, l2_normalize
from minilm.st import heads
from minilm.st.folder import get_model, Model
from minilm.st.heads import PACKED_POOLING_MODES, check_options, dense_head, pool, pool_segments
from minilm.tokenizer import padded_length
from minilm.tools.progress import Progress

# ----------------------------------------------------------------------------------------------------------------
# Planning the forwards.


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


# ----------------------------------------------------------------------------------------------------------------
# Running them.


TRACES = collections.Counter()  # (rows, length, slots) -> times embed_rows was traced: each is one compilation
COMPILED = set()  # the forwards (shape and options) this process has compiled or loaded from the cache


def embed_rows(params, ids_BT, positions_BT, segments_BT, *, cfg, pooling, normalize, num_layers=None, dim=None,
               slots=1, skip=0, dense=(), activations=()):
    """The forward (compiled_embed_rows jits it): rows of one or more texts -> emb_BND, one vector per (row, slot).
    Segment s + 1 of a row is the text in slot s (0 = padding). `dim` keeps the first D dimensions (Matryoshka),
    truncating before the L2 normalisation so the shorter vector has unit length; `skip` leaves each text's first
    tokens out of the pooling (a prompt, heads.skip_prompt)."""
    TRACES[ids_BT.shape + (slots,)] += 1  # runs while tracing only, not on each call
    h_BTD = encode(params, ids_BT, same_text(segments_BT), cfg, num_layers=num_layers,
                   positions_BT=positions_BT).last_hidden_state.astype(jnp.float32)  # pool in float32
    if pooling == "max":  # one text per row: pool over its tokens as usual
        emb_BND = pool(h_BTD, (segments_BT > 0) & (positions_BT >= skip), "max")[:, None]
    else:
        emb_BND = pool_segments(h_BTD, segments_BT, positions_BT, slots, pooling, skip)
    emb_BND = dense_head(emb_BND, dense, activations)[..., :dim]  # Dense modules, if any
    return l2_normalize(emb_BND) if normalize else emb_BND


@functools.cache
def compiled_embed_rows():
    """embed_rows jitted, made at its first use: its compiler options (the CPU matmul library, fast/xla.py) depend on
    the backend, known only once JAX has started."""
    return jax.jit(embed_rows, compiler_options=xla.compiler_options(), static_argnames=STATIC)


STATIC = ("cfg", "pooling", "normalize", "num_layers", "dim", "slots", "skip", "activations")  # one compile each


CPU_PACKED_TOKENS = 4096  # on a CPU bigger forwards fall out of the caches and run slower (docs/fast-path.md)


def packed_tokens(batch_size: int) -> int:
    """Tokens per packed forward: batch_size x 128 (a padded batch's worth of texts up to 128 tokens), at most
    CPU_PACKED_TOKENS on the CPU."""
    tokens = batch_size * 128
    return min(tokens, CPU_PACKED_TOKENS) if jax.default_backend() == "cpu" else tokens


@functools.lru_cache(maxsize=2)
def cast_params(model: Model, dtype: str):
    """The model's params in another dtype, cast once per model (a Model hashes by identity)."""
    return jax.tree.map(lambda x: x.astype(dtype), model.params)


def embed(texts, model=None, *, batch_size: int = 32, max_length: int | None = None, normalize: bool | None = None,
          num_layers: int | None = None, dim: int | None = None, prompt: str | None = None,
          prompt_name: str | None = None, pack: bool = True, dtype: str = "float32", progress=None,
          fast: bool = True, truncated: list | None = None) -> np.ndarray:
    """Embed a list of strings -> float32 [N, dim], row i for texts[i]: the plain path (st/heads.py embed, which is
    model.embed's loop with the folder's head), faster.

    The options of the plain path (model, batch_size, max_length, normalize, num_layers, dim, prompt, prompt_name),
    plus: pack: several
    texts share a row (packing.plan_packed), packed_tokens(batch_size) per forward; without it, batch_size texts per
    forward, sorted by length and padded (packing.plan_padded). dtype "bfloat16" computes the encoder in bfloat16
    (for GPUs and TPUs); float32 is the reference. progress: a line on stderr as forwards finish (None: for 1,000
    texts or more). fast=False runs the plain path itself. truncated: a list that receives the number of texts cut
    at max_length tokens (embed.py says so in a note)."""
    m = get_model(model)
    texts = check_options(texts, m, batch_size, max_length, num_layers, dim)
    if isinstance(progress, Progress):  # a stream's: it reports across calls
        report, own = progress, False
    else:
        report = Progress(len(texts), enabled=len(texts) >= 1000 if progress is None else bool(progress),
                          quiet_for=0.0 if progress is True else QUIET_FOR)
        own = True
    if not fast:  # the plain path itself, batch_size texts at a time (its own batches), reporting as it goes
        plain = functools.partial(heads.embed, model=m, batch_size=batch_size, max_length=max_length,
                                  normalize=normalize, num_layers=num_layers, dim=dim, prompt=prompt,
                                  prompt_name=prompt_name)
        if truncated is not None:
            truncated.append(count_cut(m, m.tokenizer.word_pieces(heads.with_prompt(m, texts, prompt, prompt_name)[0]),
                                       max_length))
        out = []
        with report.stopped_on_error(own):
            for start in range(0, len(texts), batch_size):
                out.append(plain(texts[start:start + batch_size]))
                report(start + len(out[-1]), final=own and start + batch_size >= len(texts))
        return np.concatenate(out)
    texts, skip = heads.with_prompt(m, texts, prompt, prompt_name)
    cfg = m.config
    normalize = m.normalize if normalize is None else normalize
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r} is not supported; expected float32 or bfloat16")
    params = m.params if dtype == "float32" else cast_params(m, dtype)
    pieces = m.tokenizer.word_pieces(texts)  # Tokenizer.encode_batch, in its two steps, to count what is cut
    if truncated is not None:
        truncated.append(count_cut(m, pieces, max_length))
    ids = [m.tokenizer.assemble(p, max_length).ids for p in pieces]
    lengths = [len(x) for x in ids]
    pack = pack and m.pooling in PACKED_POOLING_MODES
    plan = plan_packed(lengths, tokens=packed_tokens(batch_size)) if pack else plan_padded(lengths, batch_size)
    out = np.zeros((len(texts), dim or m.dim), np.float32)
    done, pending, forward = 0, None, compiled_embed_rows()

    def collect(fwd: Forward, emb_BND):  # the host waits here for the device, one forward behind
        nonlocal done
        out[fwd.index] = np.asarray(emb_BND)[fwd.row, fwd.slot]
        done += len(fwd.index)
        report(done, final=own and done == len(texts))

    # Parity with torch needs full float32 matmuls (GPUs default to TF32 and TPUs to bf16 passes).
    with jax.default_matmul_precision("highest"), report.stopped_on_error(own):
        for fwd in plan:  # dispatch is asynchronous: the next batch is built while this one computes
            key = (fwd.rows, fwd.length, fwd.slots, cfg, m.pooling, normalize, num_layers, dim, skip, dtype)
            if key not in COMPILED:  # the call below blocks while it compiles: the progress line says so
                report.status = f"compiling the forward for {fwd.rows} x {fwd.length} tokens (once per shape)"
            emb_BND = forward(params, *fwd.arrays(ids, m.tokenizer.pad_id), cfg=cfg, pooling=m.pooling,
                              normalize=normalize, num_layers=num_layers, dim=dim, slots=fwd.slots, skip=skip,
                              dense=m.dense, activations=m.activations)
            COMPILED.add(key)
            report.status = None
            if pending:
                collect(*pending)
            pending = (fwd, emb_BND)
        collect(*pending)
    return out


def count_cut(m, pieces: list[list[int]], max_length: int | None) -> int:
    """Texts whose word pieces and special tokens exceed max_length (default: the model's): those truncation cuts."""
    limit = (m.tokenizer.max_length if max_length is None else max_length) - m.tokenizer.n_special(False)
    return sum(len(p) > limit for p in pieces)


def embed_stream(texts, model=None, *, chunk_size: int = 16384, progress: bool = False, total: int | None = None,
                 **options):
    """Embed an iterable of strings chunk by chunk -> yields (texts, float32 [n, dim]) in input order. Memory
    stays flat however long the input (embed.py streams files through this). progress: report on stderr as each
    forward finishes, not each chunk (total: the number of texts, when known, for the time left). options: those of
    embed()."""
    model = get_model(model)
    report = Progress(total, enabled=progress, quiet_for=QUIET_FOR)
    chunk, end = [], object()
    with report.stopped_on_error():
        for text in itertools.chain(texts, [end]):  # `end` marks the end (a None in the input is an error in embed)
            if text is not end:
                chunk.append(text)
            if chunk and (len(chunk) == chunk_size or text is end):
                yield chunk, embed(chunk, model, progress=report, **options)
                report.offset += len(chunk)
                chunk = []
    report.finish()


QUIET_FOR = 1.0  # seconds: a stream that ends sooner prints no progress at all
