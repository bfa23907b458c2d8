"""Crash safety and determinism of train.py and distill.py, each run in its own process on a tiny model: kill -9
and a full disk while a checkpoint is written (MINILM_FAULT, see minilm/run/atomic.py), SIGTERM, bit-identical
parameters across processes and after resuming from any checkpoint, and memory that stays flat over a long run.

Every run is a subprocess. In one process, each run compiles its step again anyway (a new jit closure), about 12 s
here; in subprocesses sharing JAX's persistent compilation cache, a run after the first takes about 3 s."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from minilm.st.folder import load
from tests.conftest import REPO
from tests.tiny import distill_folder, train_folder

LONG = ("--steps", "100000", "--log-every", "10", "--lr", "2e-5")  # runs until SIGTERM, at the default lr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """model/ and pairs.jsonl for train.py, teacher/ and text.txt.gz for distill.py."""
    return distill_folder(train_folder(tmp_path_factory.mktemp("crash")))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def start(script, data, out, *flags, cache=None, **env):
    """A 6-step run (later flags override) on 2 CPU devices in its own process. cache: JAX's persistent compilation
    cache folder; env: more environment variables (MINILM_FAULT, PYTHONHASHSEED)."""
    if script == "train.py":
        inputs = ["--model", data / "model", "--data", data / "pairs.jsonl"]
    else:
        inputs = ["--teacher", data / "teacher", "--data", data / "text.txt.gz", "--student-layers", "1",
                  "--num-relation-heads", "8"]
    cmd = [sys.executable, REPO / script, *inputs, "--batch-size", "8", "--max-length", "16", "--warmup", "2",
           "--lr", "1e-3", "--steps", "6", "--log-every", "1", "--keep-optimizer", "0", "--out", out, *flags]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu", **env}
    if cache:
        env |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def tensors(folder, file="model.safetensors") -> dict:
    return safetensors.numpy.load_file(str(folder / file))


def assert_same(a, b):
    """Every tensor of the model and of the optimizer state, bit for bit."""
    for file in ("model.safetensors", "optimizer.safetensors"):
        x, y = tensors(a, file), tensors(b, file)
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(x[k], y[k]), (file, k)


def latest(out) -> str:
    return (out / "latest").read_text().strip()


@pytest.fixture(scope="module", params=["train.py", "distill.py"])
def straight(request, data, cache):
    """(script, a, b): two uninterrupted 6-step runs, at once in two processes with other hash seeds. `a` keeps every
    checkpoint and fills the compilation cache (the first run of this step); `b` compiles its own step."""
    script = request.param
    a, b = data / script / "a", data / script / "b"
    runs = [start(script, data, a, "--save-every", "1", "--keep", "10", cache=cache, PYTHONHASHSEED="1"),
            start(script, data, b, PYTHONHASHSEED="2")]
    for proc in runs:
        code, _, err = finish(proc)
        assert code == 0, err
    return script, a, b


def test_two_processes_give_bit_identical_parameters(straight, data):
    """Dropout on, the data order shuffled: the same seed and data give the same bits in another process."""
    script, a, b = straight
    assert_same(a / "step-0000006", b / "step-0000006")
    first = tensors(data / ("model" if script == "train.py" else "teacher"))
    final = tensors(a / "step-0000006")
    assert any(not np.array_equal(final[k], first[k]) for k in final)  # training did change the weights


@pytest.mark.parametrize("k", [1, 3, 5])
def test_resume_from_any_checkpoint_equals_straight_run(straight, data, cache, tmp_path, k):
    script, a, _ = straight
    code, out, err = finish(start(script, data, tmp_path, "--resume", a / f"step-{k:07d}", cache=cache))
    assert code == 0 and f"at step {k}" in out, err
    assert_same(tmp_path / "step-0000006", a / "step-0000006")


def test_kill_9_while_saving_keeps_the_last_checkpoint(straight, data, cache, tmp_path):
    """kill -9 during the save of step 4 (the second checkpoint): train.py after its first file is synced,
    distill.py after all 12, just before the rename. step 2 stays the latest, and --resume OUT finishes the run
    with the same bits as a run never killed."""
    script, a, _ = straight
    files = 1 if script == "train.py" else 12
    fault = f"kill:step-0000004:{files}"
    code, _, err = finish(start(script, data, tmp_path, "--save-every", "2", cache=cache, MINILM_FAULT=fault))
    assert code == -signal.SIGKILL, err
    assert latest(tmp_path) == "step-0000002" and not (tmp_path / "step-0000004").exists()
    assert len(list(tmp_path.glob(".step-0000004.tmp-*"))) == 1  # the unfinished save, under a temporary name
    assert_same(tmp_path / "step-0000002", a / "step-0000002")  # complete, and as the straight run had it
    assert load(tmp_path / "step-0000002").config.num_hidden_layers >= 1

    code, out, err = finish(start(script, data, tmp_path, "--save-every", "2", "--resume", tmp_path, cache=cache))
    assert code == 0 and "at step 2" in out, err
    assert latest(tmp_path) == "step-0000006"
    assert not list(tmp_path.glob(".step-*.tmp-*"))  # the next save removed the leftover
    assert_same(tmp_path / "step-0000006", a / "step-0000006")


def test_disk_full_is_a_one_line_error_and_keeps_the_last_checkpoint(straight, data, cache, tmp_path):
    script, *_ = straight
    code, _, err = finish(start(script, data, tmp_path, "--save-every", "2", cache=cache,
                                MINILM_FAULT="disk-full:step-0000004:3"))
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"{script}: error: {tmp_path / 'step-0000004'}: cannot save the "
                                            f"checkpoint ({tmp_path / 'latest'} is unchanged): No space left on device")
    assert latest(tmp_path) == "step-0000002" and load(tmp_path / "step-0000002")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step-0000002"]  # no temporary folder


def logged_step(metrics) -> int:
    lines = metrics.read_text().splitlines(keepends=True) if metrics.exists() else []
    complete = [line for line in lines if line.endswith("\n")]
    return json.loads(complete[-1])["step"] if complete else 0


def running(proc, deadline) -> bool:
    if proc.poll() is None and time.time() < deadline:
        return True
    proc.kill()
    pytest.fail(f"the run ended or timed out: {proc.communicate()[1]}")


def wait_for_step(proc, metrics, step: int) -> None:
    deadline = time.time() + 300
    while running(proc, deadline) and logged_step(metrics) < step:
        time.sleep(0.2)


def test_sigterm_saves_and_exits(data, cache, tmp_path):
    proc = start("train.py", data, tmp_path, *LONG, cache=cache)
    wait_for_step(proc, tmp_path / "metrics.jsonl", 10)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143 and "SIGTERM: saving a checkpoint" in err and "stopped early: interrupted" in err, err
    state = json.loads((tmp_path / latest(tmp_path) / "trainer_state.json").read_text())
    assert state["step"] >= 10 and load(tmp_path / latest(tmp_path))


def rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def check_memory_is_flat(data, cache, out, steps: int):
    """Sample the run's RSS every 0.5 s until it logs `steps`: the last quarter stays within 10% of the RSS at 25%."""
    proc, deadline = start("train.py", data, out, *LONG, cache=cache), time.time() + 1200
    samples = [(0, rss_mb(proc.pid))]  # (logged step, RSS MB)
    while samples[-1][0] < steps:
        time.sleep(0.5)
        if running(proc, deadline):
            samples.append((logged_step(out / "metrics.jsonl"), rss_mb(proc.pid)))
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 143
    at_quarter = next(rss for step, rss in samples if step >= steps // 4)
    last = max(rss for step, rss in samples if step >= 3 * steps // 4)
    print(f"\nRSS over {steps} steps ({len(samples)} samples): {at_quarter:.0f} MB at step {steps // 4}, at most "
          f"{last:.0f} MB in the last quarter ({last / at_quarter:.3f}x)")
    assert last <= 1.10 * at_quarter


def test_memory_stays_flat(data, cache, tmp_path):
    check_memory_is_flat(data, cache, tmp_path, 200)


@pytest.mark.slow
def test_memory_stays_flat_over_2000_steps(data, cache, tmp_path):
    check_memory_is_flat(data, cache, tmp_path, 2000)
