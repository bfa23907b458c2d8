"""Bad input never crashes and never passes silently: arbitrary text, bad files for embed.py, damaged model folders.

Text properties run through hypothesis (derandomized: the same examples on every run) on the real all-MiniLM-L6-v2
tokenizer; embeddings use a tiny random encoder with the real vocabulary size, so an example costs milliseconds.
Every error is one line, `embed.py: error: ...`, naming the file (and the line, field or tensor), exit code 1, and
never a Python traceback. Cases tests/test_embed.py and tests/test_checkpoint.py already cover (a bad byte on line
3, an empty or missing input file, a folder as input, a 16-byte safetensors file, pytorch_model.bin renamed from a
safetensors file) are not repeated here.
"""
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import pickle
import re
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import embed as cli
from minilm import embed
from minilm.st.folder import load, save
from minilm.st.folder import read_tokenizer
from minilm.tools import truncation
from tests.conftest import REPO
from tests.tiny import tiny_model

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
# Characters that break naive text handling: NUL and other controls, zero-width joiners and the BOM, right-to-left
# marks and scripts, line and paragraph separators that str.splitlines splits on, a combining accent, emoji ZWJ
# sequences, a 150-letter word (WordPiece gives [UNK] past 100 chars), and surrogates written as escaped text.
TRAPS = ["\x00", "\x07", "\x1b", "\x7f", "\u200b", "\u200d", "\ufeff", "\u200f", "\u202e", "\r", "\n", "\t", "\x0b",
         "\x1c", "\x85", "\u2028", "\u0301", "\ufffd", "\\ud800", "\\udfff", "שלום", "مرحبا بالعالم", "日本語",
         "👩\u200d👩\u200d👧", "🇫🇷", "a" * 150, "the", " cat ", "Ångström", "antidisestablishmentarianism"]
TEXT = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRAPS)), max_size=60).map("".join)
MAX_LENGTHS = (2, 3, 8, 64, 256, 512)
FILLER = "the quick brown fox jumps over the lazy dog " * 20  # more than 64 tokens: pads the batch to 64


@pytest.fixture(scope="module")
def tok(real_model_dir):
    return read_tokenizer(real_model_dir)


@pytest.fixture(scope="module")
def tiny_real_vocab(real_model_dir, tmp_path_factory):
    """A tiny random encoder that reads the real tokenizer's ids (vocab_size 30522), texts cut to 64 tokens."""
    model = tiny_model(tmp_path_factory.mktemp("tiny"), vocab_size=30522, max_position_embeddings=64)
    return dataclasses.replace(model, tokenizer=read_tokenizer(real_model_dir, max_length=64))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny model folder; tests damage copies of it."""
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    save(tiny_model(folder.parent), folder)
    return folder


def run_cli(*argv) -> tuple[int, str, str]:
    """embed.py's main in this process -> (exit code, stdout, stderr). An uncaught exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def run_script(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "embed.py"), *map(str, argv)], capture_output=True, text=True,
                          timeout=120, **kw)


def assert_one_line_error(code, out, err, pattern):
    """Exit 1, nothing on stdout, no traceback; stderr ends with one `embed.py: error:` line that matches pattern
    (progress lines may come before it)."""
    assert code == 1 and out == "" and "Traceback" not in err, (code, out, err)
    errors = [line for line in err.splitlines() if line.startswith("embed.py: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and re.search(pattern, errors[0]), (pattern, err)


# ----------------------------------------------------------------------------------------------------------------
# 1. Text


@SETTINGS
@given(text=TEXT)
def test_any_text_tokenizes_within_vocab_and_max_length(tok, text):
    for max_length in MAX_LENGTHS:
        pair_length = max(max_length, 3)  # a pair needs room for [CLS] [SEP] [SEP]
        for enc, limit in ((tok.encode(text, max_length=max_length), max_length),
                           (truncation.encode(tok, text, "a pair 🙂", max_length=pair_length), pair_length)):
            assert len(enc.ids) <= limit and len(enc.ids) == len(enc.type_ids)
            assert all(0 <= i < tok.vocab_size for i in enc.ids)
            assert enc.ids[0] == tok.cls_id and enc.ids[-1] == tok.sep_id
        assert tok.encode_batch([text, ""], max_length=max_length) == [tok.encode(text, max_length=max_length),
                                                                       tok.encode("", max_length=max_length)]
    assert len(tok.encode(text).ids) <= tok.max_length == 256


@SETTINGS
@given(text=TEXT)
def test_padding_never_changes_an_embedding(tiny_real_vocab, text):
    """A text alone equals the same text beside a 64-token text and an empty one: padded (pack=False: its row
    padded to 64 tokens instead of its own length, plus an all-padding row) or packed (sharing a row)."""
    for pack in (False, True):
        alone = embed([text], tiny_real_vocab, pack=pack)
        batch = embed([FILLER, text, ""], tiny_real_vocab, pack=pack)
        assert np.all(np.isfinite(alone)) and np.linalg.norm(alone[0]) == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(batch[1], alone[0], rtol=0, atol=1e-6)


def test_escaped_surrogates_are_ordinary_text(tok):
    """'\\ud800' typed as six characters is text like any other: word pieces that spell it back."""
    enc = tok.encode("\\ud800 \\udfff")
    assert tok.tok.token_to_id("[UNK]") not in enc.ids
    assert tok.tok.decode(list(enc.ids)).replace(" ", "") == "\\ud800\\udfff"


def test_lone_surrogate_is_a_clear_error(tok, tiny_dir):
    """A str holding a real lone surrogate cannot be UTF-8 encoded, so the Rust tokenizer refuses it; the error names
    the text and the character. Python decodes undecodable argv bytes into such surrogates (surrogateescape):
    `python embed.py $'\\xff'` passes '\\udcff'."""
    with pytest.raises(ValueError, match=r"texts\[1\] has a lone surrogate U\+D800 at character 1, which is not valid"):
        tok.encode_batch(["fine", "a\ud800b"])
    with pytest.raises(ValueError, match=r"U\+DFFF at character 0"):
        tok.encode("\udfff")
    assert_one_line_error(*run_cli("--model", tiny_dir, "ok", "\udcff"), r"texts\[1\] has a lone surrogate U\+DCFF")


def test_one_megabyte_line(tok, tiny_dir, tmp_path):
    words = "word " * 200_000  # 1 MB, 200k word pieces before truncation
    assert tok.encode(words).ids == (tok.cls_id, *[tok.tok.token_to_id("word")] * 254, tok.sep_id)
    unk = tok.tok.token_to_id("[UNK]")
    assert tok.encode("x" * 1_000_000).ids == (tok.cls_id, unk, tok.sep_id)  # one 1 MB "word": [UNK]
    (tmp_path / "in.txt").write_text(words + "\nshort\n", encoding="utf-8")
    code, _, err = run_cli("--model", tiny_dir, "--input", tmp_path / "in.txt", "--output", tmp_path / "x.npy")
    assert code == 0 and np.load(tmp_path / "x.npy").shape == (2, 32), err


# ----------------------------------------------------------------------------------------------------------------
# 2. Files given to embed.py


LINE = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12).map(lambda s: s.rstrip("\r"))


@SETTINGS
@given(lines=st.lists(LINE, min_size=1, max_size=8), crlf=st.booleans(), bom=st.booleans())
def test_lines_come_back_exactly(tiny_dir, tmp_path_factory, lines, crlf, bom):
    """Any UTF-8 lines, '\\n' or '\\r\\n' endings, with or without a BOM: one text per line, no '\\r', no BOM;
    a '\\r', U+2028 or \\x0b inside a line stays text."""
    assume(bom or not lines[0].startswith("\ufeff"))  # without a BOM marker, a leading U+FEFF is read as one
    folder = tmp_path_factory.mktemp("lines")
    data = ("\ufeff" if bom else "") + "".join(line + ("\r\n" if crlf else "\n") for line in lines)
    (folder / "in.txt").write_bytes(data.encode("utf-8"))
    code, _, err = run_cli("--model", tiny_dir, "--input", folder / "in.txt", "--output", folder / "x.jsonl")
    assert code == 0, err
    rows = (folder / "x.jsonl").read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 is inside texts
    assert [json.loads(r)["text"] for r in rows if r] == lines


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfeh\x00i\x00\n\x00", r"in\.txt:1: not valid UTF-8 \(byte 0xff at column 1\)"),  # UTF-16 with its BOM
    (b"ok\r\nok\r\n\x80bad\r\n", r"in\.txt:3: not valid UTF-8 \(byte 0x80 at column 1\)"),  # line counted on CRLF
    ("fine\ncafé\n".encode("latin-1"), r"in\.txt:2: not valid UTF-8 \(byte 0xe9 at column 4\)"),
    pytest.param(b"\xef\xbb\xbf", r"in\.txt: is empty; there is nothing to embed", id="only a BOM"),
])
def test_unreadable_input_file_names_file_and_line(tiny_dir, tmp_path, content, message):
    (tmp_path / "in.txt").write_bytes(content)
    result = run_cli("--model", tiny_dir, "--input", tmp_path / "in.txt", "--output", tmp_path / "x.npy")
    assert_one_line_error(*result, message)
    assert not (tmp_path / "x.npy").exists()


def test_stdin_at_end_of_file_is_an_empty_input(tiny_dir):
    p = run_script("--model", tiny_dir, "--input", "-", stdin=subprocess.DEVNULL)
    assert (p.returncode, p.stdout, p.stderr) == (1, "", "embed.py: error: <stdin>: is empty; there is nothing to "
                                                        "embed\n")


def test_closed_stdin_is_a_clear_error(tiny_dir):
    p = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, str(REPO / "embed.py"), "--model",
                        str(tiny_dir), "--input", "-"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("embed.py: error: <stdin>: "), p.stderr


def test_reader_closing_the_pipe_early_gives_no_traceback(tiny_dir, tmp_path):
    """`python embed.py --input big.txt | head -c 10`: the output is far larger than the pipe buffer, so embed.py
    writes into a closed pipe. It stops quietly (exit 0, or 141 as a shell reports SIGPIPE)."""
    (tmp_path / "in.txt").write_text("".join(f"the cat sat on the mat {i}\n" for i in range(1500)), encoding="utf-8")
    p = subprocess.Popen([sys.executable, str(REPO / "embed.py"), "--model", str(tiny_dir), "--input",
                          str(tmp_path / "in.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(10) == b'{"text": "'
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) in (0, 141), err
    assert "Traceback" not in err and "Exception ignored" not in err and "Error" not in err, err


def output_in_missing_folder(tmp_path):
    return tmp_path / "no" / "such" / "x.npy", "No such file or directory"


def output_under_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    return tmp_path / "file.txt" / "x.npy", "Not a directory"


def output_is_a_folder(tmp_path):
    (tmp_path / "x.npy").mkdir()
    return tmp_path / "x.npy", "Is a directory"


def output_in_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    return tmp_path / "ro" / "x.npy", "Permission denied"


@pytest.mark.parametrize("where", [
    output_in_missing_folder,
    output_under_a_file,
    output_is_a_folder,
    output_in_read_only_folder])
def test_unwritable_output_names_the_path(tiny_dir, tmp_path, where):
    out, reason = where(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = run_cli("--model", tiny_dir, "--output", out, "one text")
    assert_one_line_error(*result, f"{out}: cannot write \\({reason}\\)")
    assert sorted(tmp_path.rglob("*")) == before  # no temporary file left behind


# ----------------------------------------------------------------------------------------------------------------
# 3. Model folders


def edit_config(**fields):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        config.update(fields)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return damage


def edit_bytes(change):
    def damage(folder):
        data = bytearray((folder / "model.safetensors").read_bytes())
        (folder / "model.safetensors").write_bytes(bytes(change(data)))
    return damage


def corrupt_header(data):
    data[20:40] = b"\xff" * 20  # inside the JSON header that follows the 8-byte header length
    return data


def shift_first_offset(data):
    """A well-formed header whose first tensor's data_offsets point elsewhere (a digit prepended)."""
    at = data.index(b'"data_offsets":[') + len(b'"data_offsets":[')
    return data[:at] + b"9" + data[at:]


def huge_header_length(data):
    data[:8] = b"\xff" * 8
    return data


def remove_tokenizer(folder):
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").unlink()


def tokenizer_of_a_larger_vocab(folder):
    (folder / "tokenizer.json").unlink()
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8")
    (folder / "vocab.txt").write_text(vocab + "".join(f"extra{i}\n" for i in range(100)), encoding="utf-8")


def write(name, text):
    return lambda folder: (folder / name).write_text(text)


# (damage, exception, message): each message names the file and the field or tensor at fault.
BAD_FOLDERS = {
    "truncated safetensors": (edit_bytes(lambda d: d[: len(d) // 2]), ValueError,
                              r"model\.safetensors: cannot read safetensors \(.*incomplete metadata"),
    "safetensors header bytes": (edit_bytes(corrupt_header), ValueError,
                                 r"model\.safetensors: cannot read safetensors \(.*header: invalid UTF-8"),
    "safetensors header length": (edit_bytes(huge_header_length), ValueError,
                                  r"model\.safetensors: cannot read safetensors \(.*header too large"),
    "safetensors tensor offsets": (edit_bytes(shift_first_offset), ValueError,
                                   r"model\.safetensors: cannot read safetensors \(.*invalid offset for tensor "
                                   r"`[\w.]+`"),
    "config hidden_size": (edit_config(hidden_size=64), ValueError,
                           r"tiny: tensor '[\w.]+' has shape \(\d+, 32\), expected \(\d+, 64\) from config\.json "
                           r"\(hidden_size=64"),
    "config num_hidden_layers": (edit_config(num_hidden_layers=3), ValueError,
                                 r"tensors missing for config\.json \(num_hidden_layers=3\): encoder\.layer\.2\."),
    "config num_attention_heads 0": (edit_config(num_attention_heads=0), ValueError,
                                     r"config\.json: num_attention_heads must be >= 1, got 0"),
    "config hidden_act": (edit_config(hidden_act="swish2"), ValueError,
                          r"config\.json: hidden_act 'swish2' is not supported; expected one of \('gelu'"),
    "config model_type": (edit_config(model_type="gpt2"), ValueError,
                          r"config\.json: model_type 'gpt2' is not supported; minilm implements BERT encoders"),
    "config architectures": (edit_config(architectures=["GPT2LMHeadModel"]), ValueError,
                             r"config\.json: architectures \['GPT2LMHeadModel'\] is not supported"),
    "config invalid JSON": (write("config.json", '{\n  "hidden_size": 32,\n  "vocab_size": ,\n}'), ValueError,
                            r"config\.json: not valid JSON \(line 3: Expecting value\)"),
    "no tokenizer": (remove_tokenizer, FileNotFoundError, r"tiny: no tokenizer\.json or vocab\.txt"),
    "tokenizer of another model": (tokenizer_of_a_larger_vocab, ValueError,
                                   r"tiny: the tokenizer has \d+ tokens but config\.json vocab_size is 60"),
    "sentence_bert_config not an object": (write("sentence_bert_config.json", "[256]"), ValueError,
                                           r"sentence_bert_config\.json: expected a JSON object, got list"),
    "sentence_bert_config max_seq_length": (write("sentence_bert_config.json", '{"max_seq_length": "256"}'),
                                            ValueError, r"sentence_bert_config\.json: field 'max_seq_length' should "
                                                        r"be a positive integer, got '256'"),
    "modules.json not a list": (write("modules.json", '{"0": "Transformer"}'), ValueError,
                                r"modules\.json: expected a JSON array, got dict"),
}


@pytest.fixture
def damaged(tiny_dir, tmp_path):
    def make(damage):
        folder = tmp_path / "tiny"
        shutil.copytree(tiny_dir, folder)
        damage(folder)
        return folder
    return make


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_damaged_model_folder_is_named_error(damaged, case):
    damage, error, message = BAD_FOLDERS[case]
    folder = damaged(damage)
    with pytest.raises(error, match=message):
        load(folder)
    assert_one_line_error(*run_cli("--model", folder, "x"), message)


class Trap:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pytorch_bin_is_never_unpickled(damaged, tmp_path):
    pickle.loads(pickle.dumps(Trap(tmp_path / "armed")))
    assert (tmp_path / "armed").exists()  # the trap works when unpickled
    marker = tmp_path / "unpickled"
    folder = damaged(lambda f: (f / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker))))
    assert load(folder).dim == 32  # beside model.safetensors the .bin is ignored
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"tiny: has pytorch_model\.bin but no model\.safetensors"):
        load(folder)
    assert_one_line_error(*run_cli("--model", folder, "x"), r"pytorch_model\.bin but no model\.safetensors")
    assert not marker.exists()


MODELING = "import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\nclass EvilModel: pass\n"


def test_code_in_the_folder_never_runs(damaged, tmp_path):
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "modeling_evil.py").write_text(MODELING)
    runpy.run_path(str(tmp_path / "probe" / "modeling_evil.py"))
    assert (tmp_path / "probe" / "modeling_evil.ran").exists()  # the module marks that it ran when imported
    folder = damaged(write("modeling_evil.py", MODELING))
    assert load(folder).dim == 32  # a stray .py file is ignored
    edit_config(auto_map={"AutoModel": "modeling_evil.EvilModel"})(folder)
    with pytest.raises(ValueError, match=r"config\.json: auto_map .* asks for custom model code"):
        load(folder)
    assert_one_line_error(*run_cli("--model", folder, "x"), r"config\.json: auto_map .*never runs code")
    assert not (folder / "modeling_evil.ran").exists() and "modeling_evil" not in sys.modules
