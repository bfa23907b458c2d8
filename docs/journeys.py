"""How far a reader travels through the repository's code to follow a journey: a measurement, not a test.

    python docs/journeys.py                      # every journey the checked-out code has
    python docs/journeys.py --repo /tmp/before --journey train-step --verbose

Each journey runs on CPU (JAX_PLATFORMS=cpu) on a tiny random model from tests/tiny.py, in a fresh process (so no
cache warmed by another journey hides calls), with the repository given by --repo first on sys.path and as the
working directory. Every minilm module and the entry script are imported before the measured region, so no module
body runs inside it, and jax.clear_caches() is called right before it, so the jitted functions are traced inside
it: tracing runs the Python model functions once, which is the code a reader follows. sys.setprofile records every
Python call from the start of the region to its end. Counted are calls of functions whose code lives in a repository
file: under --repo, not under tests/, docs/, benchmarks/ or experiments/ (they only drive or measure), not in a hidden
folder or site-packages.
- functions: distinct (file, qualified name) called. Lambdas, comprehensions and generator expressions are not
  counted (a call one makes counts as made by the nearest counted function below it); nested named functions
  and closures are.
- files: distinct repository files those functions live in.
- cross-file hops: distinct call edges caller -> callee whose files differ. The caller is the nearest counted
  function below the callee on the call stack, so a call through JAX (jit, grad, shard_map) is one edge.
- returns into a file already left: distinct cross-file edges whose callee's file is also the file of a function
  further down the stack, below the caller (A -> B -> A: a loop in one file calling back into the file that
  called it, e.g. runs.py's loop calling train.py's next_batch closure).
Journeys, and the sub-regions reported on their own lines:
- embed-cli: embed.py main(["--output", X.npy, "--input", 3-line file, "--model", tiny model folder]).
- embed-plain: minilm.model.embed(texts, params, cfg, tokenizer) (embed(texts, model) in trees before it), the
  plain path's entry (minilm.embedding.embed where minilm/embedding.py exists, in earlier trees);
  else (the code before it) model.tokenizer.batch(texts) and minilm.model.sentence_embedding. The form is printed.
  (minilm.embed(texts, fast=False) reaches the same function through one line of minilm/fast/embedding.py.)
- train-step: train.main(... --steps 2 --log-every 1) as a whole, and /iteration: one turn of the training loop,
  from the call that draws the first batch to the one that draws the second. The draws are the calls of a
  `*Sampler.__next__`; the loop is the deepest frame both draws run under (runs.py's run_loop, or train.py's own
  loop), and the turn runs from its child containing the first draw (next_batch, or the draw itself) to its child
  containing the second, plus the loop's own function (not the call into it). So it holds batch, step (traced on
  its first call) and log, wherever the loop lives.
  --steps 2 only marks where the first turn ends; distinct counts of the whole run are those of --steps 1.
- relation-loss: distill.main(... --steps 1) as a whole, and /device_loss: the calls under distill.py's
  device_loss (itself included), i.e. the relation loss down to minilm/relations.py.
- train-settings, distill-settings: the journey of a run's settings through train.main(... --steps 1) (train-step's
  run, one step) and distill.main(... --steps 1) (relation-loss's run). A stop is a call of a counted function (the
  rules above; a generator resumed is not a new call) that receives the run's settings as an argument: one of its
  parameters (co_varnames[:co_argcount + co_kwonlyargcount] in f_locals at the call, and the contents of its *args
  and **kwargs) is an argparse.Namespace, or an instance of a dataclass (dataclasses.is_dataclass, not the class
  itself) whose class is defined in an entry script (train.py, distill.py) or under minilm/run/, or whose class name
  ends in Args, Options or Settings. Reported: stops (such calls, in time order), files (distinct files among
  them), returns (stops whose file was visited earlier in the stop sequence and left since: in A B A the second A
  counts 1, in A A B none). --verbose lists the stops.
"""
import argparse
import atexit
import contextlib
import dataclasses
import inspect
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

MARK = re.compile(r"Sampler\.__next__$")  # a batch draw: delimits the training loop's turns
JOURNEYS = {"embed-cli": ["embed.py"], "embed-plain": [], "train-step": ["train.py"],
            "relation-loss": ["distill.py", "minilm/relations.py"], "train-settings": ["train.py"],
            "distill-settings": ["distill.py"]}  # name -> files it needs
SETTINGS_NAMES = ("Args", "Options", "Settings")  # a dataclass whose name ends so holds a run's settings
GENERATOR = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class Recorder:
    """sys.setprofile hook: calls = [(callee key, stack)], stack = ((serial, key), ...) of the counted frames from
    the callee down; a key is (file relative to the repo, qualified name); serials tell frames apart."""

    def __init__(self, root: pathlib.Path):
        self.root, self.keys, self.live, self.calls, self.serial = root, {}, {}, [], 0

    def key(self, code):
        if code not in self.keys:
            path, k = pathlib.Path(os.path.realpath(code.co_filename)), None  # <frozen os>, <string>: not files
            if os.path.isabs(code.co_filename) and path.is_relative_to(self.root) and \
                    not code.co_name.startswith("<"):  # <lambda>, <genexpr>, <module>
                parts = path.relative_to(self.root).parts
                if parts[0] not in ("tests", "docs", "benchmarks", "experiments") and not any(p.startswith(".") or p == "site-packages"
                                                                      for p in parts):
                    k = ("/".join(parts), code.co_qualname)
            self.keys[code] = k
        return self.keys[code]

    def frame_serial(self, frame):
        if id(frame) not in self.live:
            self.serial += 1
            self.live[id(frame)] = self.serial
        return self.live[id(frame)]

    def __call__(self, frame, event, arg):
        if event == "call" and self.key(frame.f_code):
            self.live.pop(id(frame), None)  # a new frame (or a generator resumed): a new serial
            stack, f = [], frame
            while f is not None:
                if self.key(f.f_code):
                    stack.append((self.frame_serial(f), self.key(f.f_code)))
                f = f.f_back
            self.calls.append((stack[0][1], tuple(stack)))
        elif event == "return" and self.key(frame.f_code):
            self.live.pop(id(frame), None)

    def run(self, fn):
        sys.setprofile(self)
        try:
            return fn()
        finally:
            sys.setprofile(None)


class SettingsRecorder(Recorder):
    """Also records the stops of a run's settings: stops = [(key, names of the parameters that hold settings)]."""

    def __init__(self, root: pathlib.Path):
        super().__init__(root)
        self.stops, self.generators, self.classes = [], {}, {}

    def is_settings(self, value) -> bool:
        if isinstance(value, argparse.Namespace):
            return True
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            return False
        cls = type(value)
        if cls not in self.classes:
            file = getattr(sys.modules.get(cls.__module__), "__file__", None) or ""
            path = pathlib.Path(os.path.realpath(file))
            rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else ""
            self.classes[cls] = rel in ("train.py", "distill.py") or rel.startswith("minilm/run/") \
                or cls.__name__.endswith(SETTINGS_NAMES)
        return self.classes[cls]

    def __call__(self, frame, event, arg):
        super().__call__(frame, event, arg)
        code = frame.f_code
        if event != "call" or not self.key(code):
            return
        if code.co_flags & GENERATOR:  # a generator's frame sends "call" at every resumption: count its first
            if self.generators.get(id(frame)) is frame:
                return
            self.generators[id(frame)] = frame  # held, so that its id is not reused
        n = code.co_argcount + code.co_kwonlyargcount
        names = list(code.co_varnames[:n])
        star = code.co_varnames[n:n + bool(code.co_flags & inspect.CO_VARARGS)
                                + bool(code.co_flags & inspect.CO_VARKEYWORDS)]
        local, held = frame.f_locals, []
        for name in names + list(star):
            value = local.get(name)
            values = value.values() if name in star and isinstance(value, dict) else \
                value if name in star and isinstance(value, tuple) else [value]
            if any(self.is_settings(v) for v in values):
                held.append(name)
        if held:
            self.stops.append((self.key(code), held))


def report_settings(name, stops, verbose):
    files = [key[0] for key, _ in stops]
    returns = sum(1 for i, f in enumerate(files) if i and f != files[i - 1] and f in files[:i - 1])
    say(f"journey {name}: {len(set(files))} files, {len(stops)} stops, {returns} returns into a file already left")
    if verbose:
        for (file, qualname), held in stops:
            say(f"  stop {file}:{qualname} ({', '.join(held)})")


def say(*lines):  # the report; the journey's own prints go to the sys.stdout it was given
    print(*lines, sep="\n", file=sys.__stdout__)


def report(name, calls, verbose):
    funcs, hops, back, edges = {}, {}, {}, {}
    for k, stack in calls:
        funcs[k] = funcs.get(k, 0) + 1
        if len(stack) > 1:
            edge = (stack[1][1], k)
            edges[edge] = True
            if edge[0][0] != k[0]:
                hops[edge] = True
                if k[0] in {key[0] for _, key in stack[2:]}:
                    back[edge] = True
    files = {f for f, _ in funcs}
    say(f"journey {name}: {len(files)} files, {len(funcs)} functions, {len(hops)} cross-file hops, "
          f"{len(back)} returns into a file already left")
    if verbose:
        for file in sorted(files):
            say(f"  file {file}: " + ", ".join(q for f, q in funcs if f == file))
        for a, b in edges:
            tag = " [hop, return]" if (a, b) in back else " [hop]" if (a, b) in hops else ""
            say(f"  edge {a[0]}:{a[1]} -> {b[0]}:{b[1]}{tag}")


def turn(calls):
    """One turn of the training loop: the calls from the first batch draw's loop child to the second's."""
    marks = [stack for k, stack in calls if MARK.search(k[1])][:2]
    if len(marks) < 2:
        return None
    s1, s2 = ([serial for serial, _ in reversed(stack)] for stack in marks)  # bottom -> top
    n = next(i for i, (a, b) in enumerate(zip(s1, s2)) if a != b)
    start = next(i for i, (_, stack) in enumerate(calls) if stack[0][0] == s1[n])
    end = next(i for i, (_, stack) in enumerate(calls) if stack[0][0] == s2[n])
    loop = marks[0][len(s1) - n]  # the loop's frame: its function is read too (not the call into it)
    return [(loop[1], (loop,))] + calls[start:end]


def run_journey(name, repo: pathlib.Path, verbose: bool):
    sys.stdout = io.StringIO()  # the journey's own prints (runs.print_args binds sys.stdout at import) go here
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    import importlib
    import pkgutil

    import jax
    import minilm
    from tests.tiny import TEXTS, distill_folder, tiny_model, train_folder
    assert pathlib.Path(minilm.__file__).resolve().is_relative_to(repo), f"minilm comes from {minilm.__file__}"
    for m in pkgutil.walk_packages(minilm.__path__, "minilm.", onerror=lambda _: None):
        with contextlib.suppress(Exception):
            importlib.import_module(m.name)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="journeys-"))
    atexit.register(shutil.rmtree, tmp, True)
    texts = list(TEXTS[:3])
    form = None
    if name == "embed-cli":
        import embed
        (tmp / "texts.txt").write_text("\n".join(texts) + "\n")
        train_folder(tmp)
        argv = ["--output", str(tmp / "emb.npy"), "--input", str(tmp / "texts.txt"), "--model", str(tmp / "model")]
        script = embed
    elif name == "embed-plain":
        model = tiny_model(tmp)
        if hasattr(importlib.import_module("minilm.model"), "embed"):
            from minilm.model import embed as plain_embed
            if "tokenizer" in inspect.signature(plain_embed).parameters:  # the book's own arguments, no Model
                form = "minilm.model.embed(texts, params, cfg, tokenizer)"
                fn = lambda: plain_embed(texts, model.params, model.config, model.tokenizer)  # noqa: E731
            else:
                form, fn = "minilm.model.embed(texts, model)", lambda: plain_embed(texts, model)
        elif (pathlib.Path("minilm") / "embedding.py").is_file():
            plain_embed = importlib.import_module("minilm.embedding").embed
            form, fn = "minilm.embedding.embed(texts, model)", lambda: plain_embed(texts, model)
        else:
            from minilm.model import sentence_embedding

            def fn():
                b = model.tokenizer.batch(texts)
                return jax.block_until_ready(sentence_embedding(model.params, b.ids_BT, b.mask_BT, model.config))
            form = "model.tokenizer.batch(texts) + minilm.model.sentence_embedding (the code before minilm.embedding)"
    elif name in ("train-step", "train-settings"):
        import train
        train_folder(tmp)
        argv = ["--model", str(tmp / "model"), "--data", str(tmp / "pairs.jsonl"), "--batch-size", "8",
                "--max-length", "16", "--warmup", "1", "--steps", "2" if name == "train-step" else "1",
                "--log-every", "1", "--out", str(tmp / "out")]
        script = train
    else:
        import distill
        distill_folder(tmp)
        argv = ["--teacher", str(tmp / "teacher"), "--data", str(tmp / "text.txt.gz"), "--batch-size", "8",
                "--max-length", "16", "--student-layers", "1", "--num-relation-heads", "8", "--steps", "1",
                "--out", str(tmp / "out")]
        script = distill
    if form is None:
        def fn():
            if (rc := script.main(argv)) != 0:
                raise RuntimeError(f"{script.__name__}.py main exited {rc}")

    recorder, out = (SettingsRecorder if name.endswith("-settings") else Recorder)(repo), io.StringIO()
    jax.clear_caches()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            recorder.run(fn)
    except (Exception, SystemExit) as e:
        raise SystemExit(f"journey {name}: FAILED: {type(e).__name__}: {e}\n{out.getvalue()[-2000:]}") from e
    if name.endswith("-settings"):
        return report_settings(name, recorder.stops, verbose)
    report(name, recorder.calls, verbose)
    if form:
        say(f"  measured: {form}")
    if name == "train-step":
        calls = turn(recorder.calls)
        if calls is None:
            say("journey train-step/iteration: not found (fewer than two calls of a *Sampler.__next__)")
        else:
            report("train-step/iteration", calls, verbose)
    if name == "relation-loss":
        calls = [c for c in recorder.calls if ("distill.py", "device_loss") in (k for _, k in c[1])]
        report("relation-loss/device_loss", calls, verbose)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(pathlib.Path(__file__).resolve().parent.parent), help="repository root")
    p.add_argument("--journey", action="append", choices=list(JOURNEYS), help="repeatable (default: all there)")
    p.add_argument("--verbose", action="store_true", help="also list the files and the call edges")
    args = p.parse_args()
    repo = pathlib.Path(args.repo).resolve()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("MINILM_COMPILE_CACHE", "0")  # embed.py would otherwise write ~/.cache/minilm
    names = args.journey or [n for n, need in JOURNEYS.items() if all((repo / f).exists() for f in need)]
    if len(names) == 1:
        return run_journey(names[0], repo, args.verbose)
    for name in names:  # each in a fresh process: no cache warmed by another journey hides calls
        done = subprocess.run([sys.executable, __file__, "--repo", str(repo), "--journey", name]
                              + ["--verbose"] * args.verbose, capture_output=True, text=True)
        print(done.stdout, end="")
        if done.returncode:
            print(f"journey {name}: FAILED (exit {done.returncode}): {done.stderr.strip()[-3000:]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
