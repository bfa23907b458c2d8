"""embed.py streams: a long input file goes through in chunks, the .npy is written as it goes (its header fixed
at the end), the input is read lazily, and peak memory does not grow with the file: asserted on the 1-million-line
run, marked slow (`python -m pytest -m slow tests/test_stream.py -s` prints its peak RSS)."""
import re
import subprocess
import sys

import numpy as np
import pytest

from minilm import embed
from minilm.fast.embedding import embed_stream
from minilm.tools.progress import Progress
from minilm.st.folder import save
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


def test_streamed_npy_equals_embed(tiny_dir, tmp_path):
    write_lines(tmp_path / "lines.txt", 20_000)  # a full chunk of 16,384 texts and part of another
    rss = embed_file(tiny_dir, tmp_path / "lines.txt", tmp_path / "lines.npy")
    x = np.load(tmp_path / "lines.npy")
    assert x.shape == (20_000, 32) and x.dtype == np.float32
    lines = (tmp_path / "lines.txt").read_text(encoding="utf-8").splitlines()
    picks = [0, 1, 16_383, 16_384, 19_999]  # chunk edges (16,384 texts a chunk)
    np.testing.assert_allclose(x[picks], embed([lines[i] for i in picks], tiny_dir), rtol=0, atol=1e-6)
    # printed, not asserted: the 1-million-line test below asserts that memory does not grow with the input
    print(f"\npeak RSS: {rss:.0f} MiB for 20,000 lines")


def test_embed_stream_reads_its_input_lazily(tiny_dir):
    """Each chunk is embedded and handed on before the next is read: the input is never all in memory."""
    read = []

    def lines():
        for i in range(10):
            read.append(i)
            yield f"the cat {i}"

    stream = embed_stream(lines(), tiny_dir, chunk_size=4)
    chunk, emb = next(stream)
    assert chunk == ["the cat 0", "the cat 1", "the cat 2", "the cat 3"] and emb.shape == (4, 32)
    assert read == [0, 1, 2, 3]  # not one line more than the first chunk
    assert [len(c) for c, _ in stream] == [4, 2]


@pytest.mark.slow
def test_one_million_lines(tiny_dir, tmp_path):
    write_lines(tmp_path / "small.txt", 20_000)
    write_lines(tmp_path / "million.txt", 1_000_000)
    small = embed_file(tiny_dir, tmp_path / "small.txt", tmp_path / "small.npy")
    big = embed_file(tiny_dir, tmp_path / "million.txt", tmp_path / "million.npy")
    x = np.load(tmp_path / "million.npy", mmap_mode="r")
    assert x.shape == (1_000_000, 32) and np.isfinite(x[-1000:]).all()
    print(f"\npeak RSS: {small:.0f} MiB for 20,000 lines, {big:.0f} MiB for 1,000,000 lines")
    assert big < small + 100  # 50x the lines; keeping ~100 bytes a line would already add 95 MiB


def test_progress_runs_on_a_clock_across_chunks(tiny_dir, monkeypatch, capsys):
    """Progress lines come from a clock, also while no forward finishes (a long compile, a long forward), count the
    texts of every chunk of a stream, give the rate, elapsed time and time left, and end with the total."""
    import time
    from minilm.fast import embedding as fast
    report = Progress(40, enabled=True, every=0.05)
    time.sleep(0.3)  # nothing reported yet: the clock still shows where the job is
    report.finish()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 2 and lines[0] == "embedded 0/40 texts  0/s  0:00 elapsed  starting", lines
    monkeypatch.setattr(fast, "QUIET_FOR", 0.0)
    monkeypatch.setattr(Progress, "EVERY", 0.01)
    texts = [f"the cat {i} sat on the mat" for i in range(40)]
    stream = embed_stream(iter(texts), tiny_dir, chunk_size=16, progress=True, total=40, batch_size=4, pack=False)
    assert [len(chunk) for chunk, _ in stream] == [16, 16, 8]
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(re.fullmatch(r"embedded \d+/40 texts  \d+/s  0:\d\d elapsed  (0:\d\d left|starting)", line) or
               re.fullmatch(r"(.*, then )?compiling the forward for \d+ x \d+ tokens \(once per shape\)  0:\d\d "
                            r"elapsed", line) for line in lines[:-1]), lines
    assert lines[-1].startswith("embedded 40/40 texts") and "left" not in lines[-1]


def test_plain_path_reports_progress_too(tiny_dir):
    """embed.py --plain: the plain path counts its batches as they finish (its progress used to stay at 0), and its
    embeddings are still the plain path's own."""
    from minilm import load
    from minilm.st.heads import embed as plain_embed
    from minilm.fast import embedding as fast
    texts = [f"the dog {i} is eating food" for i in range(10)]
    seen = []
    class Recorder(Progress):
        def __call__(self, done, final=False):
            seen.append(done)
            super().__call__(done, final)

    report = Recorder(10, enabled=False)
    emb = fast.embed(texts, tiny_dir, batch_size=4, fast=False, progress=report)
    assert seen == [4, 8, 10] and report.done == 10
    np.testing.assert_array_equal(emb, plain_embed(texts, load(tiny_dir), batch_size=4))


def test_progress_says_compiling_while_a_new_shape_compiles(tiny_dir, monkeypatch, capsys):
    """While the first forward of a shape compiles (seconds, before any text is done) the progress line says so,
    instead of counting 0 texts; a shape already compiled in this process says nothing."""
    from minilm.fast import embedding as fast
    seen = []
    real = fast.compiled_embed_rows()

    def recording(*args, **kwargs):
        seen.append(report.status)
        return real(*args, **kwargs)

    monkeypatch.setattr(fast, "compiled_embed_rows", lambda: recording)
    monkeypatch.setattr(fast, "COMPILED", set())
    report = Progress(3, enabled=False)
    fast.embed(["the cat sat", "a dog", "the man"], tiny_dir, progress=report)
    report = Progress(3, enabled=False)
    fast.embed(["the cat sat", "a dog", "the man"], tiny_dir, progress=report)
    assert len(seen) == 2 and seen[0].endswith("compiling the forward for 1 x 32 tokens (once per shape)"), seen
    assert seen[1] is None and report.status is None
    line = Progress(40, enabled=False)
    line.status = "compiling the forward for 8 x 64 tokens (once per shape)"
    line.show(line.start + 3.2)
    assert capsys.readouterr().err == "compiling the forward for 8 x 64 tokens (once per shape)  0:03 elapsed\n"
