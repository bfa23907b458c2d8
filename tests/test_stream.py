"""embed.py streams: a long input file goes through in chunks, the .npy is written as it goes (its header fixed
at the end), and peak memory does not grow with the file. Fast here on 80k lines; the 1-million-line run is
marked slow (`python -m pytest -m slow tests/test_stream.py -s` prints its peak RSS)."""
import subprocess
import sys

import numpy as np
import pytest

from minilm import embed
from minilm.checkpoint import save
from tests.conftest import REPO
from tests.tiny import DATA_WORDS, tiny_model

# Run embed.py as a script and print its own peak RSS (KiB) on the last stderr line.
PEAK_RSS = ("import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream") / "tiny"
    save(tiny_model(folder.parent), folder)
    return folder


def write_lines(path, n: int):
    rng = np.random.default_rng(n)
    words = np.array(DATA_WORDS)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(" ".join(words[rng.integers(0, len(words), 1 + i % 12)]) + f" {i}\n")


def embed_file(tiny_dir, path, out) -> int:
    """Run embed.py --input path --output out; returns its peak RSS in MiB."""
    p = subprocess.run([sys.executable, "-c", PEAK_RSS, str(REPO / "embed.py"), "--model", str(tiny_dir), "--input",
                        str(path), "--output", str(out)], capture_output=True, text=True, timeout=1800,
                       env={"MINILM_COMPILE_CACHE": "0", "JAX_PLATFORMS": "cpu", "PATH": ""})
    assert p.returncode == 0, p.stderr
    return int(p.stderr.strip().splitlines()[-1]) / 1024


def test_streamed_npy_equals_embed_and_memory_does_not_grow(tiny_dir, tmp_path):
    write_lines(tmp_path / "small.txt", 20_000)  # a full chunk of 16,384 texts and part of another
    write_lines(tmp_path / "big.txt", 80_000)
    small = embed_file(tiny_dir, tmp_path / "small.txt", tmp_path / "small.npy")
    big = embed_file(tiny_dir, tmp_path / "big.txt", tmp_path / "big.npy")
    x = np.load(tmp_path / "big.npy")
    assert x.shape == (80_000, 32) and x.dtype == np.float32
    lines = (tmp_path / "big.txt").read_text(encoding="utf-8").splitlines()
    picks = [0, 1, 16_383, 16_384, 79_999]  # chunk edges (16,384 texts a chunk)
    np.testing.assert_allclose(x[picks], embed([lines[i] for i in picks], tiny_dir), rtol=0, atol=1e-6)
    print(f"\npeak RSS: {small:.0f} MiB for 20,000 lines, {big:.0f} MiB for 80,000 lines")
    assert big < 1.1 * small  # 4x the lines, not more memory


@pytest.mark.slow
def test_one_million_lines(tiny_dir, tmp_path):
    write_lines(tmp_path / "small.txt", 20_000)
    write_lines(tmp_path / "million.txt", 1_000_000)
    small = embed_file(tiny_dir, tmp_path / "small.txt", tmp_path / "small.npy")
    big = embed_file(tiny_dir, tmp_path / "million.txt", tmp_path / "million.npy")
    x = np.load(tmp_path / "million.npy", mmap_mode="r")
    assert x.shape == (1_000_000, 32) and np.isfinite(x[-1000:]).all()
    print(f"\npeak RSS: {small:.0f} MiB for 20,000 lines, {big:.0f} MiB for 1,000,000 lines")
    assert big < 1.15 * small
