"""Multi-process data parallelism for real: train.py and distill.py started as 2 processes on localhost, each with 2
virtual CPU devices, joined through jax.distributed (gloo collectives between the processes), against 1 process with
4 devices. Equal means: the logged losses and every saved parameter within 1e-5, the STS Spearman evaluated during
the run equal to 4 decimals. Also: only process 0 writes, a checkpoint of the 2-process run resumes in either mode,
and when one process dies or freezes the other stops with an error within a bounded time."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from tests.conftest import REPO
from tests.tiny import distill_folder, train_folder

TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = train_folder(distill_folder(tmp_path_factory.mktemp("multiprocess")))
    (tmp / "sts.csv").write_text("the cat sat,the cat sat on the mat,4.5\nthe man is eating,music plays,0.5\n"
                                 "a dog,the dog,4.0\nthe woman plays,the man plays,2.5\nthe mat,a mat,3.0\n")
    return tmp


TRAIN = ("train.py", "--model", "{tmp}/model", "--data", "{tmp}/pairs.jsonl", "--batch-size", "8", "--max-length",
         "16", "--lr", "1e-3", "--warmup", "1", "--log-every", "1", "--eval-sts", "{tmp}/sts.csv", "--eval-every", "1")
DISTILL = ("distill.py", "--teacher", "{tmp}/teacher", "--data", "{tmp}/text.txt.gz", "--student-layers", "0",
           "--num-relation-heads", "8",
           "--embedding-loss", "mse", "--embedding-weight", "32", "--batch-size", "8", "--max-length", "16",
           "--lr", "1e-3", "--warmup", "1", "--log-every", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp, argv, out, processes: int, devices: int, *flags) -> list[subprocess.Popen]:
    """The same command in `processes` processes with `devices` virtual CPU devices each."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, *(a.format(tmp=tmp) for a in argv), *(["--out", str(tmp / out)] if out else []), *flags]
    if processes == 1:
        return [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    where = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(processes), "--peer-timeout", "10"]
    return [subprocess.Popen([*cmd, *where, "--process-id", str(i)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(processes)]


def finish(procs) -> list[str]:
    """Wait for every process; each must succeed. Returns their standard outputs."""
    outs = [p.communicate(timeout=600) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}\n{err[-3000:]}"
    return [out for out, _ in outs]


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_params_equal(a, b):
    pa, pb = (safetensors.numpy.load_file(str(f / "model.safetensors")) for f in (a, b))
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=TOL, rtol=0, err_msg=k)


def assert_runs_equal(a, b, keys=("loss", "grad_norm", "sts_spearman")):
    ra, rb = records(a), records(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for x, y in zip(ra, rb):
        assert x.get("step") == y.get("step")
        for k in keys:
            if k in x:
                tol = 1e-4 if k == "sts_spearman" else TOL  # Spearman x 100, printed to 4 decimals by both
                assert abs(x[k] - y[k]) <= tol, (k, x, y)


def test_train_two_processes_equal_one_process_and_resume_in_both_modes(setup):
    """2 processes x 2 devices, 2 steps; resumed to 3 steps by 2 processes and, from a copy, by 1 process x 4
    devices: both equal 1 process x 4 devices straight to 3 steps (losses, Spearman, parameters within 1e-5)."""
    one = finish(start(setup, TRAIN, "t-one", 1, 4, "--steps", "3"))
    two = finish(start(setup, TRAIN, "t-two", 2, 2, "--steps", "2"))
    # Only process 0 logs, evaluates aloud and saves; process 1 prints nothing of the run.
    assert "step      2/2" in two[0] and "STS spearman" in two[0] and "saved" in two[0]
    assert "step " not in two[1] and "saved" not in two[1] and "STS" not in two[1]
    steps = [r["step"] for r in records(setup / "t-two") if "loss" in r]
    assert steps == [1, 2]  # one line per step: nobody else wrote
    assert sorted(p.name for p in (setup / "t-two").iterdir()) == \
        ["args.json", "latest", "metrics.jsonl", "step-0000002"]  # no temporary folder left behind
    shutil.copytree(setup / "t-two", setup / "t-two-then-one")
    finish(start(setup, ("train.py",), None, 2, 2, "--resume", str(setup / "t-two"), "--steps", "3"))
    finish(start(setup, ("train.py",), None, 1, 4, "--resume", str(setup / "t-two-then-one"), "--steps", "3"))
    for run in ("t-two", "t-two-then-one"):
        assert_runs_equal(setup / run, setup / "t-one")
        assert_params_equal(setup / run / "step-0000003", setup / "t-one" / "step-0000003")
    assert "step      3/3" in one[0]


def test_distill_two_processes_equal_one_process(setup):
    """Relations and the embedding loss together, a kept-layer student: 3 steps, equal within 1e-5."""
    finish(start(setup, DISTILL, "d-one", 1, 4, "--steps", "3"))
    two = finish(start(setup, DISTILL, "d-two", 2, 2, "--steps", "3"))
    assert "step      3/3" in two[0] and "step " not in two[1]
    assert_runs_equal(setup / "d-two", setup / "d-one", keys=("loss", "grad_norm", "qq", "kk", "vv", "embedding"))
    assert_params_equal(setup / "d-two" / "step-0000003", setup / "d-one" / "step-0000003")


@pytest.mark.parametrize("victim,how", [(1, signal.SIGKILL),
                                         pytest.param(0, signal.SIGSTOP, marks=pytest.mark.slow)])
def test_when_one_process_dies_or_freezes_the_other_stops(setup, victim, how):
    """Process 1 killed, or process 0 (the coordinator) frozen: the survivor exits with an error that says another
    process died, within --peer-timeout (10 s) plus a margin, instead of waiting forever."""
    out = f"dead-{victim}"
    procs = start(setup, TRAIN, out, 2, 2, "--steps", "100000", "--eval-every", "0")
    metrics = setup / out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    procs[victim].send_signal(how)
    killed = time.time()
    survivor = procs[1 - victim]
    try:
        _, err = survivor.communicate(timeout=60)
        waited = time.time() - killed
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert survivor.returncode != 0 and waited < 40, (survivor.returncode, waited)
    assert "another task died" in err or "unhealthy" in err, err[-2000:]
