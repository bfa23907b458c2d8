"""Model folders: save/load round trip, loading in sentence-transformers and transformers, and bad folders.

Tolerances: save -> load is bit-exact; embeddings of a folder we saved, computed by sentence-transformers (torch,
CPU), are within 1e-5 per component of ours; transformers' BertModel hidden states within 1e-5.
"""
import json
import shutil

import numpy as np
import pytest
import safetensors.numpy

from minilm import embed
from minilm.checkpoint import flatten
from minilm.model import encode
from minilm.run.atomic import atomic_dir
from minilm.st.folder import load, save
from tests.conftest import REPO, need
from tests.tiny import TEXTS, tiny_model

STS_SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion.", "", "Ünïcödé 日本語 🙂",
                 "A long one. " * 150]


def tensors(folder):
    return safetensors.numpy.load_file(str(folder / "model.safetensors"))


@pytest.mark.book
def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = tiny_model(tmp_path)
    save(model, tmp_path / "m")
    again = load(tmp_path / "m")
    a, b = flatten(model.params), flatten(again.params)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), b[k]) and b[k].dtype == np.float32, k
    assert again.config == model.config
    assert (again.pooling, again.normalize, again.tokenizer.max_length) == ("mean", True, 24)
    np.testing.assert_array_equal(embed(TEXTS, again), embed(TEXTS, model))
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "README.md", "config.json", "config_sentence_transformers.json",
                     "model.safetensors",
                     "modules.json", "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                     "tokenizer_config.json", "vocab.txt"]


def test_saved_tiny_model_loads_in_sentence_transformers_and_transformers(tmp_path):
    st = need("sentence_transformers")
    transformers, torch = need("transformers"), need("torch")
    model = tiny_model(tmp_path, seed=1)
    save(model, tmp_path / "m")
    theirs = st.SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(embed(TEXTS, model), theirs, rtol=0, atol=1e-5)
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "m"), attn_implementation="eager").eval()
    batch = model.tokenizer.batch(TEXTS)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(batch.ids_BT, dtype=torch.long),
                 attention_mask=torch.tensor(batch.mask_BT, dtype=torch.long),
                 token_type_ids=torch.tensor(batch.type_ids_BT, dtype=torch.long)).last_hidden_state.numpy()
    ours = encode(model.params, batch.ids_BT, batch.mask_BT, model.config, batch.type_ids_BT).last_hidden_state
    np.testing.assert_allclose(np.asarray(ours), out, rtol=0, atol=1e-5)


def test_real_model_saved_by_us_loads_in_sentence_transformers(real_model_dir, tmp_path):
    st = need("sentence_transformers")
    model = load(real_model_dir)
    save(model, tmp_path / "copy")
    original = st.SentenceTransformer(str(real_model_dir), device="cpu").encode(STS_SENTENCES)
    copy = st.SentenceTransformer(str(tmp_path / "copy"), device="cpu")
    assert copy.max_seq_length == 256
    np.testing.assert_allclose(copy.encode(STS_SENTENCES), original, rtol=0, atol=1e-5)
    np.testing.assert_allclose(embed(STS_SENTENCES, load(tmp_path / "copy")), original, rtol=0, atol=1e-5)
    a, b = tensors(real_model_dir), tensors(tmp_path / "copy")
    for k in b:  # bit-exact against the Hub file itself
        assert np.array_equal(a[k], b[k]), k
    assert set(a) - set(b) == {"embeddings.position_ids"}


def rewrite(folder, change):
    """Apply change(dict of tensors) to a folder's model.safetensors."""
    t = tensors(folder)
    change(t)
    safetensors.numpy.save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_saved_folder_has_the_permissions_of_the_umask(tmp_path, umask):
    """Saved through a private temporary folder, a model folder still ends as mkdir and open would have made it, so
    another account that may read the parent can load the model."""
    import os
    import stat
    old = os.umask(umask)
    try:
        save(tiny_model(tmp_path), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "m", *(tmp_path / "m").rglob("*")]}
    assert modes["m"] == 0o777 & ~umask and modes["m/model.safetensors"] == 0o666 & ~umask
    assert all(mode == (0o777 if (tmp_path / path).is_dir() else 0o666) & ~umask for path, mode in modes.items()), modes


@pytest.mark.book
def test_mis_shaped_tensor_is_named_with_both_shapes(tmp_path):
    save(tiny_model(tmp_path), tmp_path / "m")
    rewrite(tmp_path / "m", lambda t: t.update({"encoder.layer.1.intermediate.dense.weight": np.zeros((47, 32),
                                                                                                      np.float32)}))
    with pytest.raises(ValueError, match=r"'encoder\.layer\.1\.intermediate\.dense\.weight' has shape \(47, 32\), "
                                         r"expected \(48, 32\)"):
        load(tmp_path / "m")


@pytest.mark.book
def test_missing_and_unexpected_tensors(tmp_path):
    save(tiny_model(tmp_path), tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "extra")
    rewrite(tmp_path / "m", lambda t: t.pop("encoder.layer.0.output.LayerNorm.bias"))
    with pytest.raises(ValueError, match=r"missing .*encoder\.layer\.0\.output\.LayerNorm\.bias"):
        load(tmp_path / "m")
    rewrite(tmp_path / "extra", lambda t: t.update({"encoder.layer.2.output.dense.bias": np.zeros(32, np.float32)}))
    with pytest.raises(ValueError, match=r"not part of a BertModel.*encoder\.layer\.2\.output\.dense\.bias"):
        load(tmp_path / "extra")


@pytest.mark.book
def test_bert_prefix_gamma_beta_position_ids_and_heads(tmp_path):
    """A BertForMaskedLM-style file: `bert.` prefix, TF-era gamma/beta, the position_ids buffer, an MLM head."""
    model = tiny_model(tmp_path)
    save(model, tmp_path / "m")

    def legacy(t):
        renamed = {}
        for k, v in t.items():
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            renamed["bert." + k] = v
        renamed["bert.embeddings.position_ids"] = np.arange(40, dtype=np.int64)[None]
        renamed["cls.predictions.bias"] = np.zeros(len(t), np.float32)
        t.clear()
        t.update(renamed)
    rewrite(tmp_path / "m", legacy)
    again = load(tmp_path / "m")
    loaded = flatten(again.params)
    for k, v in flatten(model.params).items():
        assert np.array_equal(np.asarray(v), loaded[k]), k


def test_pytorch_bin_only_folder_says_safetensors_only(tmp_path):
    save(tiny_model(tmp_path), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin but no model.safetensors; minilm reads safetensors only"):
        load(tmp_path / "m")


def test_bad_folders_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load(tmp_path / "nowhere")
    save(tiny_model(tmp_path), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON \(line 1"):
        load(tmp_path / "m")
    save(tiny_model(tmp_path), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors"):
        load(tmp_path / "m")
    save(tiny_model(tmp_path), tmp_path / "m")
    (tmp_path / "m" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": False}))
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: exactly one pooling mode"):
        load(tmp_path / "m")


def test_cls_pooling_without_normalize_loads_in_sentence_transformers(tmp_path):
    st = need("sentence_transformers")
    model = tiny_model(tmp_path, seed=2)
    model.pooling, model.normalize = "cls", False
    save(model, tmp_path / "m")
    again = load(tmp_path / "m")
    assert (again.pooling, again.normalize) == ("cls", False)
    theirs = st.SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(embed(TEXTS, again), theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False), ("max", True),
                                                 ("mean_sqrt_len", False)])
def test_folder_saved_by_the_installed_sentence_transformers_loads(tmp_path, pooling, normalize):
    """sentence-transformers 5.4 and later write "pooling_mode": "mean" and new module class paths."""
    st = need("sentence_transformers")
    model = tiny_model(tmp_path, seed=4)
    model.pooling, model.normalize = pooling, normalize
    save(model, tmp_path / "ours")
    theirs = st.SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    theirs.save(str(tmp_path / "theirs"))
    again = load(tmp_path / "theirs")
    assert (again.pooling, again.normalize) == (pooling, normalize)
    np.testing.assert_allclose(embed(TEXTS, again), theirs.encode(TEXTS), rtol=0, atol=1e-5)


@pytest.mark.parametrize("config, message", [
    ({"pooling_mode": "lasttoken"}, "pooling_mode 'lasttoken' is not supported; minilm pools with one of mean, cls"),
    ({"pooling_mode": ["mean", "max"]}, "pooling_mode \\['mean', 'max'\\] is not supported"),
    ({"pooling_mode_weightedmean_tokens": True}, "must be true, got \\['pooling_mode_weightedmean_tokens'\\]")])
def test_unsupported_pooling_names_what_is_supported(tmp_path, config, message):
    save(tiny_model(tmp_path), tmp_path / "m")
    (tmp_path / "m" / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load(tmp_path / "m")


@pytest.mark.parametrize("interrupt", [RuntimeError("crash"), KeyboardInterrupt()])
def test_interrupted_save_leaves_the_old_folder(tmp_path, interrupt):
    model = tiny_model(tmp_path)
    save(model, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    with pytest.raises(type(interrupt)):
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half a file")
            raise interrupt
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "tiny-vocab.txt"]  # no temporary folder left


@pytest.mark.book
def test_sharded_checkpoint_loads(tmp_path):
    """model.safetensors.index.json + shards (how large checkpoints are saved) loads like the single file."""
    model = tiny_model(tmp_path)
    save(model, tmp_path / "m")
    t = tensors(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        safetensors.numpy.save_file({k: t[k] for k in keys}, str(tmp_path / "m" / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = flatten(load(tmp_path / "m").params)
    for k, v in flatten(model.params).items():
        assert np.array_equal(np.asarray(v), loaded[k]), k


def test_pre_5_4_layout_fixture_loads_as_sentence_transformers_reads_it(tmp_path):
    """tests/fixtures/st2-layout (written by make_st2_folder.py beside it): old class paths, one boolean per pooling
    mode (mean_sqrt_len here), a Dense module, Normalize, max_seq_length in sentence_bert_config.json."""
    st = need("sentence_transformers")
    folder = REPO / "tests" / "fixtures" / "st2-layout"
    ours = load(folder)
    assert (ours.pooling, ours.normalize, ours.dim, ours.tokenizer.max_length) == ("mean_sqrt_len", True, 8, 24)
    texts = ["The cat sat on the mat.", "a man is eating food!", "music plays", "THE DOGS"]
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(embed(texts, ours), theirs, rtol=0, atol=1e-5)


def test_real_model_re_saved_by_the_installed_sentence_transformers(real_model_dir, stsb_dir, tmp_path):
    st = need("sentence_transformers")
    from minilm.tools.evaluate import evaluate_sts, read_sts
    st.SentenceTransformer(str(real_model_dir), device="cpu").save(str(tmp_path / "re-saved"))
    result = evaluate_sts(read_sts(stsb_dir / "stsb-en-test.csv"), load(tmp_path / "re-saved"), progress=False)
    assert round(result["spearman"], 2) == 82.03
