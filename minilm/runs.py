"""What train.py and distill.py share around their step: the loop, logging, evaluation, checkpoints, resuming,
Ctrl-C and NaN handling.

A checkpoint out/step-N/ is a model folder (embed.py, sentence-transformers and transformers load it) plus
optimizer.safetensors and trainer_state.json (step, data position, seed, args). It is written to a temporary folder
and renamed, then out/latest is rewritten by rename, so a crash at any moment leaves a complete latest checkpoint.
The random state needs no file: dropout keys are fold_in(key(seed), step), and the data order is a function of the
seed and the saved position. Temporary folders (.step-N.tmp-*) that a killed save leaves are never named by
`latest`, so --resume ignores them, and the next successful save deletes them. A save that fails (a full disk) is an
error naming the folder, and `latest` still names the previous checkpoint.
"""
import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time

import jax
import safetensors

from minilm import optim, parallel
from minilm.checkpoint import Model, atomic_dir, write_model


def save_checkpoint(out: pathlib.Path, step: int, model: Model, opt_state, data_state: dict, args,
                    keep: int = 3) -> pathlib.Path:
    folder = out / f"step-{step:07d}"
    host_model = dataclasses.replace(model, params=jax.device_get(model.params))
    try:
        with atomic_dir(folder) as tmp:
            write_model(host_model, tmp)
            optim.save_state(jax.device_get(opt_state), tmp / "optimizer.safetensors")
            state = {"step": step, "seed": args.seed, "data": data_state, "args": dataclasses.asdict(args)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
        latest_tmp = out / f".latest.tmp-{os.getpid()}"
        latest_tmp.write_text(folder.name + "\n")
        os.replace(latest_tmp, out / "latest")
    except (OSError, safetensors.SafetensorError) as e:  # a full disk (safetensors reports it as SafetensorError)
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"{folder}: cannot save the checkpoint ({out / 'latest'} is unchanged): {reason}") from None
    stale = list(out.glob(".step-*.tmp-*"))  # saves that a killed run left unfinished; `latest` never names them
    if keep > 0:
        stale += sorted(p for p in out.glob("step-*") if p.is_dir())[:-keep]
    for old in stale:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def resolve_resume(path: str) -> pathlib.Path:
    """A checkpoint folder, or an --out folder (its `latest` checkpoint)."""
    folder = pathlib.Path(path)
    if (folder / "latest").is_file():
        folder = folder / (folder / "latest").read_text().strip()
    if not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path}: no trainer_state.json (expected a checkpoint folder step-N or an --out "
                                "folder with a 'latest' file)")
    return folder


def start_state(params, sampler, mesh, resume_from: pathlib.Path | None):
    """(params, optimizer state, first step) on the mesh: fresh, or a checkpoint's optimizer state and step with
    the sampler moved to its data position."""
    opt_state, start = optim.init(params), 0
    if resume_from:
        state = json.loads((resume_from / "trainer_state.json").read_text())
        start, opt_state = int(state["step"]), optim.load_state(resume_from / "optimizer.safetensors", params)
        sampler.load_state(state["data"])
        print(f"resumed from {resume_from} at step {start}")
    return parallel.replicate(params, mesh), parallel.replicate(opt_state, mesh), start


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


def evaluate(model: Model, params, pairs) -> dict:
    from minilm.evaluate import evaluate_sts
    return evaluate_sts(pairs, dataclasses.replace(model, params=jax.device_get(params)), batch_size=64,
                        progress=False)


def run_loop(args, *, script: str, model: Model, params, opt_state, start: int, step_fn, next_batch, data_state,
             sts=None) -> int:
    """Run steps start+1 .. args.steps. next_batch() -> (arrays for step_fn, texts in it, real tokens in it);
    step_fn(params, opt_state, *arrays, key) -> (params, opt_state, {"loss", "lr", "grad_norm", ...}).
    Returns the exit status: 0 done (or --time-limit), 1 NaN loss, 130 / 143 after Ctrl-C / SIGTERM (saved)."""
    out = pathlib.Path(args.out)
    leader = jax.process_index() == 0
    if leader:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=1) + "\n")
    metrics = open(out / "metrics.jsonl", "a") if leader else None

    def log(record: dict, line: str | None = None):
        if leader:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if line:
                print(line, flush=True)

    base_key = jax.random.key(args.seed)
    last_saved, step = None, start
    t_start = t_log = time.perf_counter()
    texts = tokens = 0
    stop = StopRequest()
    try:
        while step < args.steps:
            arrays, n_texts, n_tokens = next_batch()
            key = jax.random.fold_in(base_key, step) if args.dropout else None
            new_params, new_opt, stats = step_fn(params, opt_state, *arrays, key)
            loss = float(stats["loss"])
            if not math.isfinite(loss):
                print(f"{script}: error: the loss is {loss} at step {step + 1}; stopping without saving. The last "
                      f"good checkpoint is {last_saved or 'none (none was saved yet)'}", file=sys.stderr)
                return 1
            params, opt_state, step = new_params, new_opt, step + 1
            texts, tokens = texts + n_texts, tokens + n_tokens
            if step % args.log_every == 0 or step == args.steps:
                now = time.perf_counter()
                record = {"step": step, **{k: float(v) for k, v in stats.items()},
                          "sentences_per_s": texts / (now - t_log), "tokens_per_s": tokens / (now - t_log),
                          "elapsed_s": now - t_start}
                extra = "".join(f"  {k} {float(v):.4f}" for k, v in stats.items() if k not in ("loss", "lr",
                                                                                               "grad_norm"))
                log(record, f"step {step:>6}/{args.steps}  loss {loss:.4f}{extra}  lr {record['lr']:.2e}  "
                            f"grad_norm {record['grad_norm']:.3f}  {record['sentences_per_s']:.1f} sentences/s  "
                            f"{record['tokens_per_s']:.0f} tokens/s")
                t_log, texts, tokens = now, 0, 0
            timed_out = args.time_limit and time.perf_counter() - t_start > 60 * args.time_limit
            last = step == args.steps or timed_out  # (not on Ctrl-C: the user is waiting)
            if sts and ((args.eval_every and step % args.eval_every == 0) or last):
                result = evaluate(model, params, sts)
                log({"step": step, "sts_spearman": result["spearman"], "sts_pearson": result["pearson"]},
                    f"step {step:>6}  STS spearman {result['spearman']:.2f}  pearson {result['pearson']:.2f}")
            if (args.save_every and step % args.save_every == 0) or step == args.steps or stop.requested or timed_out:
                if leader:
                    last_saved = save_checkpoint(out, step, dataclasses.replace(model, params=params), opt_state,
                                                 data_state(), args, args.keep)
                    print(f"saved {last_saved}", flush=True)
            if stop.requested or timed_out:
                print("stopped early: " + ("interrupted" if stop.requested else f"--time-limit {args.time_limit} min"),
                      file=sys.stderr)
                return 128 + stop.signum if stop.requested else 0  # 130 for Ctrl-C, 143 for SIGTERM
        return 0
    finally:
        stop.restore()
        if metrics:
            metrics.close()


def main(script: str, run, argv=None) -> int:
    """Call run(argv) and turn the errors users cause into one line and exit status 1."""
    try:
        return run(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a full disk while writing metrics.jsonl
        print(f"{script}: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last checkpoint written stays the latest
        print(f"{script}: interrupted", file=sys.stderr)
        return 130
