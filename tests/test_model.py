"""The encoder against HF BertModel (torch, eager attention) on random tiny configs, and invariances.

Tolerance: every layer's hidden states within atol 1e-5 (float32, CPU, matmul precision 'highest').
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilm import checkpoint, model as M
from minilm.config import Config
from tests.conftest import need

pytestmark = pytest.mark.book  # the learner's tier: the encoder and the config against transformers

torch = need("torch")
transformers = need("transformers")

TINY = [  # different layers, heads, hidden and intermediate sizes, activations, vocab
    Config(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           max_position_embeddings=40),
    Config(vocab_size=257, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80,
           max_position_embeddings=64, type_vocab_size=3),
    Config(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=8, intermediate_size=128,
           max_position_embeddings=32, hidden_act="gelu_new", layer_norm_eps=1e-6),
    Config(vocab_size=300, hidden_size=24, num_hidden_layers=4, num_attention_heads=2, intermediate_size=40,
           max_position_embeddings=50, hidden_act="relu"),
]


def hf_model(cfg: Config, seed: int):
    """A randomly initialised HF BertModel whose weights are then perturbed so that no tensor is a constant
    (HF init leaves biases at 0 and LayerNorm at 1, which would hide a bias or LayerNorm bug)."""
    torch.manual_seed(seed)
    hf_cfg = transformers.BertConfig(**dataclasses.asdict(cfg), attn_implementation="eager")
    model = transformers.BertModel(hf_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_params(model) -> dict:
    flat = {k: v.detach().numpy() for k, v in model.state_dict().items() if k != "embeddings.position_ids"}
    return checkpoint.unflatten(flat)


def random_batch(cfg: Config, seed: int, B=3, T=11):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (B, T)).astype(np.int32)
    lengths = np.array([T, T - 4, 1])[:B]  # one full row, one padded row, one single-token row
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, cfg.pad_token_id).astype(np.int32)
    types = (rng.integers(0, cfg.type_vocab_size, (B, T)) * mask).astype(np.int32)
    return ids, mask, types


@pytest.mark.parametrize("i", range(len(TINY)))
def test_hidden_states_match_hf_bert(i):
    cfg = TINY[i]
    hf = hf_model(cfg, seed=i)
    ids, mask, types = random_batch(cfg, seed=i)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types, dtype=torch.long), output_hidden_states=True)
    out = jax.jit(M.encode, static_argnums=3)(hf_params(hf), ids, mask, cfg, types)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    for layer, (ours, theirs) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        # Padded positions are compared too: HF computes them with the same mask, so they must agree as well.
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-5, rtol=0,
                                   err_msg=f"config {i}, hidden_states[{layer}]")
    np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref.last_hidden_state.numpy(), atol=1e-5, rtol=0)


def test_attention_qkv_matches_hf_projections():
    cfg = TINY[1]
    hf = hf_model(cfg, seed=7)
    ids, mask, types = random_batch(cfg, seed=7)
    params = hf_params(hf)
    h = M.encode(params, ids, mask, cfg, types).hidden_states[1]  # input of layer 1 (0-based)
    q, k, v = M.attention_qkv(params["encoder"]["layer"][1], h, cfg)
    sa = hf.encoder.layer[1].attention.self
    with torch.no_grad():
        h_t = torch.tensor(np.asarray(h))
        for ours, lin in ((q, sa.query), (k, sa.key), (v, sa.value)):
            theirs = lin(h_t).numpy().reshape(ours.shape)
            np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=0)


def test_sentence_embedding_is_masked_mean_then_l2():
    cfg = TINY[0]
    params = checkpoint.init_params(cfg, jax.random.key(0))
    ids, mask, types = random_batch(cfg, seed=3)
    h = np.asarray(M.encode(params, ids, mask, cfg).last_hidden_state)
    emb = np.asarray(M.sentence_embedding(params, ids, mask, cfg))
    for b in range(len(ids)):  # slow oracle: average the real tokens of one row, divide by its norm
        mean = h[b, : mask[b].sum()].mean(0)
        np.testing.assert_allclose(emb[b], mean / np.linalg.norm(mean), atol=1e-6, rtol=0)


def test_padding_does_not_change_embeddings():
    cfg = TINY[1]
    params = hf_params(hf_model(cfg, seed=1))
    ids, mask, _ = random_batch(cfg, seed=5, T=9)
    emb = M.sentence_embedding(params, ids, mask, cfg)
    pad = 23
    ids_p = np.pad(ids, ((0, 2), (0, pad)))  # more padded columns and two all-padding rows
    mask_p = np.pad(mask, ((0, 2), (0, pad)))
    emb_p = M.sentence_embedding(params, ids_p, mask_p, cfg)
    np.testing.assert_allclose(np.asarray(emb_p[:3]), np.asarray(emb), atol=2e-6, rtol=0)
    assert np.all(np.isfinite(np.asarray(emb_p)))  # all-padding rows give zeros, not NaN


def test_dropout_only_with_a_key():
    cfg = TINY[0]
    params = checkpoint.init_params(cfg, jax.random.key(1))
    ids, mask, _ = random_batch(cfg, seed=2)
    a = M.encode(params, ids, mask, cfg).last_hidden_state
    b = M.encode(params, ids, mask, cfg).last_hidden_state
    c = M.encode(params, ids, mask, cfg, key=jax.random.key(0)).last_hidden_state
    d = M.encode(params, ids, mask, cfg, key=jax.random.key(0)).last_hidden_state
    e = M.encode(params, ids, mask, cfg, key=jax.random.key(1)).last_hidden_state
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)  # same key, same mask: replayable (GradCache relies on it)
    assert np.abs(np.asarray(a - c)).max() > 1e-3 and np.abs(np.asarray(c - e)).max() > 1e-3


def test_dropout_keeps_expectation():
    """Dropout drops at the rate and keeps the mean, as jax.random.bernoulli's draw does (the same law, checked the
    same way: the bound is met by both)."""
    x = jnp.ones((200_000,))
    y = M.dropout(x, 0.1, jax.random.key(0))
    z = jnp.where(jax.random.bernoulli(jax.random.key(0), 0.9, x.shape), x / 0.9, 0.0)
    for out in (y, z):
        assert abs(float((out == 0).mean()) - 0.1) < 0.005
        assert abs(float(out.mean()) - 1.0) < 0.01


def test_dropout_masks_are_independent():
    """model.keep_mask hashes each element's index with seeds drawn from the key: neighbouring elements, elements a row
    apart, and the masks of two keys (two steps) or of two folds of one key (two dropout sites) must not correlate,
    and every column of a [rows, 1024] mask must drop at the rate asked. Tolerances: 5 standard errors."""
    def corr(a, b):
        a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
        return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))
    shape = (1024, 1024)
    key = jax.random.key(0)
    m = np.asarray(M.keep_mask(key, shape, 0.9))
    n = m.size
    assert abs(m.mean() - 0.9) < 5 * np.sqrt(0.09 / n)
    assert abs(corr(m[:, :-1], m[:, 1:])) < 5 / np.sqrt(n) and abs(corr(m[:-1], m[1:])) < 5 / np.sqrt(n)
    for other in (jax.random.key(1), jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)):
        assert abs(corr(m, np.asarray(M.keep_mask(other, shape, 0.9)))) < 5 / np.sqrt(n)
    drop_per_column = 1 - m.mean(axis=0)
    assert np.abs(drop_per_column - 0.1).max() < 5 * np.sqrt(0.09 / shape[0])
    np.testing.assert_array_equal(m, np.asarray(M.keep_mask(key, shape, 0.9)))  # a function of (key, shape)
    assert abs(np.asarray(M.keep_mask(key, (4096,), 0.5)).mean() - 0.5) < 5 * np.sqrt(0.25 / 4096)  # other rates


def test_config_json_is_transformers_bert_config(tmp_path):
    """config.py: every field written under HF's name, read back by transformers' BertConfig as the same value and
    by Config.from_json as the same Config; the defaults are all-MiniLM-L6-v2's; a file of another architecture is
    refused naming the file."""
    for cfg in (Config(), *TINY):
        cfg.to_json(tmp_path / "config.json")
        hf = transformers.BertConfig.from_json_file(str(tmp_path / "config.json"))
        for f in dataclasses.fields(Config):
            assert getattr(hf, f.name) == getattr(cfg, f.name), f.name
        assert Config.from_json(tmp_path / "config.json") == cfg
    assert (Config().hidden_size, Config().num_hidden_layers, Config().num_attention_heads) == (384, 6, 12)
    (tmp_path / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(ValueError, match=r"config\.json: model_type 'roberta' is not supported"):
        Config.from_json(tmp_path / "config.json")


def test_init_params_follow_hf_init():
    cfg = dataclasses.replace(TINY[0], hidden_size=64, intermediate_size=256, num_attention_heads=4)
    params = checkpoint.init_params(cfg, jax.random.key(0))
    flat = checkpoint.flatten(params)
    assert {k: tuple(v.shape) for k, v in flat.items()} == checkpoint.param_shapes(cfg)
    w = np.asarray(flat["encoder.layer.0.intermediate.dense.weight"])
    assert abs(w.std() - cfg.initializer_range) < 0.001 and abs(w.mean()) < 0.001
    assert np.all(np.asarray(flat["encoder.layer.0.intermediate.dense.bias"]) == 0)
    assert np.all(np.asarray(flat["embeddings.LayerNorm.weight"]) == 1)
    assert np.all(np.asarray(flat["embeddings.LayerNorm.bias"]) == 0)
    assert np.all(np.asarray(flat["embeddings.word_embeddings.weight"][cfg.pad_token_id]) == 0)
    # HF's own init draws from the same distribution: compare the spread of one weight matrix.
    hf = transformers.BertModel(transformers.BertConfig(**dataclasses.asdict(cfg)))
    w_hf = hf.encoder.layer[0].intermediate.dense.weight.detach().numpy()
    assert abs(w_hf.std() - w.std()) < 0.001


def test_flatten_unflatten_round_trip():
    cfg = TINY[3]
    params = checkpoint.init_params(cfg, jax.random.key(0))
    flat = checkpoint.flatten(params)
    assert list(flat) == list(checkpoint.param_shapes(cfg))
    assert isinstance(params["encoder"]["layer"], list)
    again = checkpoint.flatten(checkpoint.unflatten(flat))
    assert list(again) == list(flat) and all(again[k] is flat[k] for k in flat)


def test_num_layers_runs_a_prefix_of_the_encoder():
    cfg = TINY[3]
    params = checkpoint.init_params(cfg, jax.random.key(0))
    ids, mask, _ = random_batch(cfg, seed=1)
    full = M.encode(params, ids, mask, cfg)
    part = M.encode(params, ids, mask, cfg, num_layers=2)
    np.testing.assert_array_equal(part.last_hidden_state, full.hidden_states[2])
    with pytest.raises(ValueError, match="num_layers"):
        M.encode(params, ids, mask, cfg, num_layers=cfg.num_hidden_layers + 1)


def test_too_long_input_is_a_clear_error():
    cfg = TINY[0]
    params = checkpoint.init_params(cfg, jax.random.key(0))
    T = cfg.max_position_embeddings + 1
    with pytest.raises(ValueError, match="max_position_embeddings"):
        M.encode(params, np.ones((1, T), np.int32), np.ones((1, T), np.int32), cfg)
