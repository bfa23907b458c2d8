"""The pieces train.py and distill.py share around their loops: the common options, the optimizer's settings, a
training batch on the mesh, Ctrl-C, the metrics log, evaluation and saving as a run goes (checkpoints and resuming
themselves: minilm/run/resume.py). Each script owns its loop (`for step in ...`) and calls these; none of them calls
back into a script.
"""
import dataclasses
import json
import math
import pathlib
import signal
import sys
import time

import jax

from minilm import optim, parallel
from minilm.batch import pack_columns, pad_columns
from minilm.fast import xla
from minilm.run import resume
from minilm.st.folder import Model


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """How a run of train.py or distill.py is run: where it saves, on which devices, what it logs and evaluates. The
    settings of the training itself (data, steps, batch, learning rate, ...) open each script."""
    out: str = "out"  # output folder: checkpoints step-N/, metrics.jsonl, args.json
    resume: str | None = None  # continue a run as it was, from a checkpoint folder or an --out folder (its latest):
    # every option as saved unless given again (printed), into the same folder; --data and --batch-size cannot change,
    # and the model is the checkpoint's
    devices: int = 0  # devices on the 'data' mesh axis (0: all)
    distributed: bool = False  # multi-process: join the other processes first (jax.distributed.initialize; Cloud
    # TPU, Slurm and Open MPI are found by themselves, other launchers give --coordinator and the two below)
    coordinator: str | None = None  # multi-process: HOST:PORT of process 0, where it serves the others (implies
    # --distributed)
    num_processes: int = 0  # multi-process, with --coordinator: how many processes the run has
    process_id: int = -1  # multi-process, with --coordinator: this process's number, 0..num_processes-1
    peer_timeout: int = 60  # multi-process: seconds without a sign of life from a process after which the others
    # stop with an error instead of waiting for it
    eval_sts: str | None = None  # STS file (CSV sentence1,sentence2,score; TSV, JSONL) for Spearman during training
    eval_ir: str | None = None  # BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) for nDCG@10 etc.
    eval_every: int = 0  # evaluate every K steps (0: only at the end, if --eval-sts or --eval-ir)
    log_every: int = 10  # one log line every K steps
    save_every: int = 0  # checkpoint every K steps (0: only at the end)
    keep: int = 3  # keep the newest K checkpoints
    keep_optimizer: int = 1  # the newest K checkpoints keep their optimizer state, which --resume needs (0: all);
    # older ones are model folders only, a third of the size
    time_limit: float = 0.0  # minutes of training after which to save and stop (0: none)


def make_mesh(args, min_batch: int = 1):
    """The 'data' mesh of a run: joins the other processes first (multi-process runs), turns on the compilation
    cache (a rerun or a resume loads its compiled steps from disk) and, on a CPU, measures the matmul libraries once
    per machine (fast/xla.py). The global batch must split evenly over the mesh's devices."""
    if args.distributed or args.coordinator:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id, args.peer_timeout)
    xla.enable_compilation_cache()
    xla.measure_once()
    mesh = parallel.make_mesh(args.devices)
    if args.batch_size < min_batch or args.batch_size % mesh.size:
        raise ValueError(f"--batch-size {args.batch_size} must be at least {min_batch} and divisible by the "
                         f"{mesh.size} devices of the mesh (each device gets the same number of rows)")
    return mesh


def check_max_length(max_length: int, *cfgs) -> None:
    """--max-length must fit the position table of every model the run uses."""
    longest = min(c.max_position_embeddings for c in cfgs)
    if max_length > longest:
        raise ValueError(f"--max-length {max_length} exceeds max_position_embeddings {longest}")


def adamw(lr: float, warmup: int, steps: int, weight_decay: float, max_grad_norm: float) -> optim.AdamWConfig:
    """The optimizer of a run's --lr, --warmup, --steps, --weight-decay and --max-grad-norm (0: no clipping)."""
    if steps < 1:
        raise ValueError(f"--steps {steps} must be >= 1")
    if warmup > steps:
        print(f"warning: --warmup {warmup} is longer than the run's --steps {steps}: the learning rate "
              f"never reaches --lr {lr:g} (it ends at {lr * max(steps - 1, 0) / warmup:.2g}) "
              f"and never decays", file=sys.stderr)
    return optim.AdamWConfig(lr=lr, weight_decay=weight_decay, warmup=warmup, total_steps=steps,
                             max_grad_norm=max_grad_norm or None)


# ----------------------------------------------------------------------------------------------------------------
# A training batch: C columns of texts (anchor, positive[, negative]; distillation: one), B rows.


def make_batch(tokenizer, examples, max_length: int, mesh, pack: bool):
    """This process's examples -> (the batch as global arrays split over the mesh, texts in the global batch, real
    tokens in it). Packed: each local device's share packed into rows of its own (batch.py); in a multi-host
    run the processes agree on one row count and length with a small all-gather between hosts (agree_max)."""
    if pack:
        batch = pack_columns(tokenizer, examples, max_length, len(mesh.local_devices), agree=parallel.agree_max)
        tokens = int((batch.segments_RL > 0).sum())
    else:
        batch = pad_columns(tokenizer, examples, max_length)
        tokens = int(batch.mask_CBT.sum())
    texts = len(examples) * len(examples[0])
    return parallel.shard_batch(batch, mesh), texts * jax.process_count(), tokens * jax.process_count()


# ----------------------------------------------------------------------------------------------------------------
# The bookkeeping of a run.


def print_args(args, file=None) -> None:
    """The options this run sets, as flags, wrapped; every option, defaults included, is in the run's args.json."""
    lines = [""]
    for item in resume.flags(args):  # a flag and its value stay on one line
        lines[-1:] = [f"{lines[-1]} {item}".strip()] if len(lines[-1]) + len(item) < 116 else [lines[-1], item]
    print("\n".join(f"  {line}" for line in lines if line) + f"\n  (every option: {args.out}/args.json)",
          file=file or sys.stdout)



def read_evals(eval_sts: str | None, eval_ir: str | None) -> list:
    """The evaluation sets a run scores as it goes: --eval-sts pairs and an --eval-ir retrieval set, read (and so
    checked) before training starts."""
    from minilm.tools.evaluate import read_sts
    from minilm.tools.retrieval import read_beir
    return ([read_sts(eval_sts)] if eval_sts else []) + ([read_beir(eval_ir)] if eval_ir else [])


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step and save; a second one stops now."""

    def __init__(self):
        self.requested, self.signum = False, 0
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (again to stop at once)",
              file=sys.stderr, flush=True)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Run:
    """One run's bookkeeping, used as `with Run(...) as run:` around a script's loop: the out folder with args.json
    and metrics.jsonl, one log line per --log-every steps, the time limit, Ctrl-C and SIGTERM, evaluation and
    checkpoints. Only process 0 writes (a multi-host run has one log and one set of checkpoints)."""

    def __init__(self, args: RunArgs, script: str, model: Model):
        self.args, self.script, self.model = args, script, model
        self.out, self.leader = pathlib.Path(args.out), jax.process_index() == 0
        self.last_saved, self.timed_out, self.texts, self.tokens = None, False, 0, 0
        self.metrics = None
        self.evaluated = {}  # the latest evaluation figures, for the model card

    def __enter__(self):
        if self.leader:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "args.json").write_text(json.dumps(dataclasses.asdict(self.args), indent=1) + "\n")
            self.metrics = open(self.out / "metrics.jsonl", "a")
        self.stop = StopRequest()
        self.t_start = self.t_log = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.stop.restore()
        if self.metrics:
            self.metrics.close()

    def write(self, record: dict, line: str | None = None):
        if self.leader:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
            if line:
                print(line, flush=True)

    def log_step(self, step: int, stats: dict, texts: int, tokens: int):
        """After each step: stop on a NaN or infinite loss (nothing of this step is saved), a log line every
        --log-every steps, and whether the time limit has passed."""
        loss = float(stats["loss"])
        if not math.isfinite(loss):
            raise ValueError(f"the loss is {loss} at step {step}; stopping without saving. The last good checkpoint "
                             f"is {self.last_saved or 'none (none was saved yet)'}")
        self.texts, self.tokens = self.texts + texts, self.tokens + tokens
        now = time.perf_counter()
        if step % self.args.log_every == 0 or step == self.args.steps:
            seconds = now - self.t_log
            record = {"step": step, **{k: float(v) for k, v in stats.items()}, "sentences_per_s": self.texts / seconds,
                      "tokens_per_s": self.tokens / seconds, "elapsed_s": now - self.t_start}
            extra = "".join(f"  {k} {float(v):.4f}" for k, v in stats.items() if k not in ("loss", "lr", "grad_norm"))
            self.write(record, f"step {step:>6}/{self.args.steps}  loss {loss:.4f}{extra}  lr {record['lr']:.2e}  "
                               f"grad_norm {record['grad_norm']:.3f}  {record['sentences_per_s']:.1f} sentences/s  "
                               f"{record['tokens_per_s']:.0f} tokens/s")
            self.t_log, self.texts, self.tokens = now, 0, 0
        self.timed_out = bool(self.args.time_limit) and now - self.t_start > 60 * self.args.time_limit

    def due(self, step: int, every: int) -> bool:
        """Every `every` steps (0: never), and at the last step: the end of --steps or of --time-limit."""
        return bool(every and step % every == 0) or step == self.args.steps or self.timed_out

    @property
    def stopping(self) -> bool:
        return self.stop.requested or self.timed_out

    def evaluate(self, step: int, params, data) -> None:
        """data: STS pairs (minilm.tools.evaluate.read_sts) or a retrieval set (minilm.tools.retrieval.read_beir)."""
        from minilm.tools.evaluate import evaluate_sts, ir_line, StsPairs
        from minilm.tools.retrieval import evaluate_ir
        model = dataclasses.replace(self.model, params=jax.device_get(params))
        if isinstance(data, StsPairs):
            result = evaluate_sts(data, model, batch_size=64, progress=False)
            self.evaluated.update({"step": step, "sts_spearman": result["spearman"], "sts_pearson": result["pearson"]})
            self.write({"step": step, "sts_spearman": result["spearman"], "sts_pearson": result["pearson"]},
                       f"step {step:>6}  STS spearman {result['spearman']:.2f}  pearson {result['pearson']:.2f}")
        else:
            result = evaluate_ir(data, model, batch_size=64, progress=False)
            self.evaluated.update({"step": step, **{f"ir_{k}": v for k, v in result.items()}})
            self.write({"step": step, **{f"ir_{k}": v for k, v in result.items()}},
                       f"step {step:>6}  " + ir_line("IR", result))

    def save(self, step: int, params, opt_state, data_state: dict) -> None:
        if self.leader:
            model = dataclasses.replace(self.model, params=params)
            self.last_saved = resume.save_checkpoint(self.out, step, model, opt_state, data_state, self.args,
                                                     self.args.keep, self.args.keep_optimizer, self.script,
                                                     self.evaluated)
            print(f"saved {self.last_saved}", flush=True)

    def exit_status(self) -> int:
        """0 when done or stopped by --time-limit; 130 after Ctrl-C and 143 after SIGTERM (128 + the signal)."""
        if self.stopping:
            print("stopped early: " + ("interrupted" if self.stop.requested else
                                       f"--time-limit {self.args.time_limit} min"), file=sys.stderr)
        return 128 + self.stop.signum if self.stop.requested else 0


def error_status(script: str, e: BaseException) -> int:
    """A script's `except` clause: one line on stderr for an error the user can act on (a bad file or option, a full
    disk) and exit status 1, or 130 for a second Ctrl-C (the last checkpoint written stays the latest)."""
    if isinstance(e, KeyboardInterrupt):
        print(f"{script}: interrupted", file=sys.stderr)
        return 130
    if isinstance(e, (ValueError, FileNotFoundError)):
        print(f"{script}: error: {e}", file=sys.stderr)
    else:  # another OSError, e.g. a full disk while writing metrics.jsonl
        print(f"{script}: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
    return 1
