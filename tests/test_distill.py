"""distill.py: the step on 8 virtual CPU devices and on packed rows against one device with padded rows (loss and
gradients within 1e-5; relations, embeddings, both, cached targets, a PCA projection), no gradient to the teacher,
zero loss when the student is the teacher, students made three ways, the teacher cache, and the script end to end on
tiny models and text made here."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill
from minilm import parallel
from minilm.batch import pack_columns, pad_columns
from minilm.checkpoint import flatten
from minilm.extensions.teacher import pca_projection
from minilm.fast.embedding import embed
from minilm.relations import parse_relations
from minilm.st.folder import load
from tests.conftest import need
from tests.tiny import DATA_WORDS, TEXTS, distill_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return distill_folder(tmp_path_factory.mktemp("distill"))


def batch_texts(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(" ".join(rng.choice(DATA_WORDS, rng.integers(1, 12))),) for _ in range(n)]


def batch(teacher, texts, parts: int, pack: bool):
    """Texts padded (one a row, segments = mask) or packed, each of `parts` device slices packed on its own as
    distill.py does."""
    if pack:
        packed = pack_columns(teacher.tokenizer, texts, 24, parts)
        assert packed.segments_RL.max() > 1  # several texts share a row
        return packed
    return pad_columns(teacher.tokenizer, texts, 24)


CASES = {  # relations, relation heads (None: v1), embedding loss, student, cached targets, in-batch score weight
    "v2 weighted relations, narrower": ("qq:1,kk:1,vv:0.5", 4, "none", "narrow", False, 0.0),
    "v1 relations": ("qk,vv", None, "none", "kept", False, 0.0),
    "relations + mse": ("qq,kk,vv", 8, "mse", "kept", False, 0.0),
    "cosine alone, narrower (PCA), cached": ("none", None, "cosine", "narrow", True, 0.0),
    # (query, passage) pairs: the scores' softmax spans the passages of every device
    "mse + in-batch scores, pairs, cached": ("none", None, "mse", "kept", True, 0.5),
    "in-batch scores alone, narrower, pairs": ("none", None, "none", "narrow", False, 1.0),
}


def texts_of(batch_texts):
    return [t for (t,) in batch_texts]


def batch_pairs(n=16):
    """(query, passage) pairs: a short text and a longer one, every text distinct."""
    queries, passages = batch_texts(n, seed=1), batch_texts(n, seed=2)
    return [(q, f"{q} {p}") for (q,), (p,) in zip(queries, passages)]


@pytest.mark.parametrize("case", CASES)
def test_eight_devices_and_packing_equal_one_padded_device(setup, case):
    relations, r, embedding_loss, kind, cached, ranking = CASES[case]
    teacher = load(setup / "teacher")
    if kind == "kept":  # v1 needs equal head counts: a student of teacher layers
        student = distill.make_student(distill.Args(student_layers=(1,)), teacher)
    else:  # a narrower student with other heads, from scratch
        student = distill.make_student(distill.Args(student_hidden_size=16, student_heads=2, student_num_layers=1,
                                                    seed=1), teacher)
    rel = () if relations == "none" else parse_relations(relations)
    heads = distill.relation_heads(teacher.config, student.config, r) if rel else (0, 0)
    projection = None
    if kind == "narrow" and embedding_loss != "none":
        rng = np.random.default_rng(5)
        projection = jnp.asarray(pca_projection(rng.standard_normal((64, 32)).astype(np.float32), 16))
    pair = distill.Pair(t_cfg=teacher.config, s_cfg=student.config, relations=rel, heads=heads, t_layer=1, s_layer=0)
    args = distill.Args(embedding_loss=embedding_loss, embedding_weight=0.7, ranking_weight=ranking)
    one = jax.jit(jax.value_and_grad(functools.partial(distill.device_loss, axis_name=None, args=args, pair=pair,
                                                       projection=projection), has_aux=True))
    mesh = parallel.make_mesh(8)
    eight = jax.jit(distill.make_loss_and_grads(mesh, args, pair, projection))  # distill.py's own shard_map step
    on_device = lambda b: jax.tree.map(jnp.asarray, b)
    texts = batch_pairs() if ranking else batch_texts()
    (l1, parts1), g1 = one(student.params, teacher.params, on_device(batch(teacher, texts, 1, pack=False)), None, None)
    expected = {name for name, _ in rel} | ({"embedding"} if embedding_loss != "none" else set()) | \
        ({"ranking"} if ranking else set())
    assert float(l1) > 1e-6 and parts1.keys() == expected
    g1 = flatten(g1)
    targets = None
    if cached:  # the teacher's embeddings computed apart, as distill.teacher_cache does
        targets = jnp.stack([embed(list(column), teacher, max_length=24) for column in zip(*texts)])  # [C, B, D]
    results = {"1 device, packed": one(student.params, teacher.params, on_device(batch(teacher, texts, 1, pack=True)),
                                       targets, None)}
    for pack in (False, True):
        results[f"8 devices, {'packed' if pack else 'padded'}"] = eight(
            parallel.replicate(student.params, mesh), parallel.replicate(teacher.params, mesh),
            parallel.shard_batch(batch(teacher, texts, 8, pack), mesh),
            None if targets is None else parallel.shard_rows(np.asarray(targets), mesh, 1), None)
    for name, ((loss, parts), grads) in results.items():
        assert abs(float(l1) - float(loss)) <= 1e-5, name
        assert all(abs(float(parts1[k]) - float(parts[k])) <= 1e-5 for k in parts1), name
        grads = flatten(grads)
        worst = max(float(jnp.abs(g1[k] - grads[k]).max()) for k in g1)
        assert worst <= 1e-5, (name, worst)


def test_no_gradient_reaches_the_teacher(setup):
    teacher = load(setup / "teacher")
    student = distill.make_student(distill.Args(student_layers=(1,)), teacher)
    rel = parse_relations("qq,kk,vv")
    pair = distill.Pair(t_cfg=teacher.config, s_cfg=student.config, relations=rel, heads=(8, 8), t_layer=1, s_layer=0)
    loss = functools.partial(distill.device_loss, args=distill.Args(embedding_loss="mse"), pair=pair, axis_name=None)
    b = jax.tree.map(jnp.asarray, batch(teacher, batch_texts(), 1, pack=True))
    t_grads = jax.grad(lambda t: loss(student.params, t, b, None, jax.random.key(0))[0])(teacher.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(t_grads))
    s_grads = jax.grad(lambda s: loss(s, teacher.params, b, None, jax.random.key(0))[0])(student.params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(s_grads)) > 1e-4


def test_loss_is_zero_when_the_student_is_the_teacher(setup, embedding_loss="mse"):
    """Zero up to float32 rounding: teacher and student are separate computations that XLA fuses differently, and
    their embeddings differ in the last bit (the mse was 2e-17 here). A real difference (dropout left on, another
    pooling, a layer skipped) gives 1e-6 or more."""
    teacher = load(setup / "teacher")
    pair = distill.Pair(t_cfg=teacher.config, s_cfg=teacher.config, relations=parse_relations("qq,kk,vv"),
                        heads=(8, 8), t_layer=-1 % 2, s_layer=-1 % 2)
    kw = dict(args=distill.Args(embedding_loss=embedding_loss), pair=pair, axis_name=None)
    for pack in (False, True):
        b = jax.tree.map(jnp.asarray, batch(teacher, batch_texts(), 1, pack))
        loss, parts = jax.jit(functools.partial(distill.device_loss, **kw))(teacher.params, teacher.params, b, None,
                                                                            None)
        assert abs(float(parts["embedding"])) <= 1e-12 and float(loss) <= 1e-6, (pack, parts)
        student = jax.jit(functools.partial(distill.device_loss, **kw))  # a student copied from the teacher
        loss, parts = student(jax.tree.map(jnp.copy, teacher.params), teacher.params, b, None, None)
        assert abs(float(parts["embedding"])) <= 1e-12, parts


def test_pca_projection_is_the_top_principal_subspace():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12)) * np.linspace(3, 0.1, 12) @ np.linalg.qr(rng.standard_normal((12, 12)))[0]
    W = pca_projection(x.astype(np.float32), 5)
    assert W.shape == (12, 5) and np.allclose(W.T @ W, np.eye(5), atol=1e-6)  # orthonormal directions
    _, _, vt = np.linalg.svd(x - x.mean(0))  # the oracle: right singular vectors of the centred data
    assert np.allclose(W @ W.T, vt[:5].T @ vt[:5], atol=1e-5)  # the same subspace
    variance = ((x - x.mean(0)) @ W).var(0)
    assert np.all(np.diff(variance) < 0)  # largest first


def test_students_from_kept_layers_and_from_scratch_with_hf_init(setup):
    teacher = load(setup / "teacher")
    kept = distill.make_student(distill.Args(student_num_layers=1), teacher)
    assert kept.config.num_hidden_layers == 1
    assert np.array_equal(flatten(kept.params)["encoder.layer.0.output.dense.weight"],
                          flatten(teacher.params)["encoder.layer.0.output.dense.weight"])
    scratch = distill.make_student(distill.Args(student_hidden_size=16, student_heads=2, student_num_layers=3),
                                   teacher)
    assert (scratch.config.hidden_size, scratch.config.num_attention_heads, scratch.config.num_hidden_layers,
            scratch.config.intermediate_size) == (16, 2, 3, 64)
    assert float(jnp.std(flatten(scratch.params)["encoder.layer.0.attention.self.query.weight"])) == \
        pytest.approx(0.02, rel=0.2)  # HF init
    with pytest.raises(ValueError, match="choose a student"):
        distill.make_student(distill.Args(), teacher)


def run(setup, *flags, out="out"):
    return distill.main(["--teacher", str(setup / "teacher"), "--data", str(setup / "text.txt.gz"),
                         "--batch-size", "8", "--max-length", "16", "--log-every", "1", "--out", str(setup / out),
                         *flags])


def test_from_scratch_narrower_student_loss_falls(setup):
    """v2 relations, a student of another width and head count trained from scratch: the loss falls."""
    assert run(setup, "--student-hidden-size", "16", "--student-heads", "2", "--student-num-layers", "2",
               "--num-relation-heads", "4", "--steps", "30", "--lr", "3e-3", "--warmup", "3", "--no-dropout",
               out="scratch") == 0
    records = [json.loads(line) for line in (setup / "scratch" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30 and {"qq", "kk", "vv"} <= records[0].keys()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    model = load(setup / "scratch" / "step-0000030")
    assert model.config.hidden_size == 16


def test_embedding_distillation_of_a_narrower_student_with_a_teacher_cache(setup, capsys):
    """mse alone, PCA to the student's width, the teacher's embeddings cached: the loss falls, a second run reads the
    cache and repeats the first exactly, a cache of other settings is refused, and sentence-transformers loads the
    student with our embeddings (1e-5)."""
    cache = setup / "teacher.safetensors"
    flags = ("--student-hidden-size", "16", "--student-heads", "2", "--student-num-layers", "1", "--relations",
             "none", "--embedding-loss", "mse", "--teacher-cache", str(cache), "--steps", "25", "--lr", "3e-3",
             "--warmup", "2", "--no-dropout")
    losses = {}
    for out in ("emb", "emb-again"):
        assert run(setup, *flags, out=out) == 0
        records = [json.loads(line) for line in (setup / out / "metrics.jsonl").read_text().splitlines()]
        losses[out] = [r["embedding"] for r in records if "embedding" in r]
    printed = capsys.readouterr().out
    assert "embedding 188 texts with the teacher once" in printed  # 200 lines, 188 distinct
    assert "200 texts (188 distinct)" in printed and "read from" in printed
    assert "teacher PCA to 16 dims" in printed and cache.exists()
    assert losses["emb"] == losses["emb-again"] and len(losses["emb"]) == 25
    assert np.mean(losses["emb"][-5:]) < 0.8 * np.mean(losses["emb"][:5]), losses["emb"]
    assert run(setup, *flags, "--max-length", "12", out="other") == 1
    assert "other texts, another teacher or another --max-length" in capsys.readouterr().err
    st = need("sentence_transformers")
    folder = setup / "emb" / "step-0000025"
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(embed(TEXTS, load(folder)), theirs, atol=1e-5)


def test_an_interrupted_teacher_cache_continues_where_it_stopped(setup, monkeypatch):
    """The cache is saved a part at a time: stopped in its third part, a second run reads the two saved parts and
    computes only the rest; the result equals the teacher's embeddings of all texts at once (1e-6: packing
    differs), and the parts are gone once the whole file is written."""
    import minilm.fast.embedding as fast_embedding
    from minilm.extensions import teacher as cache_module
    teacher, texts = load(setup / "teacher"), [t for (t,) in batch_texts(10, seed=5)]
    calls, real = [], fast_embedding.embed

    def stopping(chunk, *args, **kwargs):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(chunk, *args, **kwargs)

    monkeypatch.setattr(fast_embedding, "embed", stopping)
    monkeypatch.setattr(cache_module, "PART_TEXTS", 4)
    file = setup / "parts-cache.safetensors"
    with pytest.raises(KeyboardInterrupt):
        cache_module.teacher_cache(str(file), texts, teacher, 16)
    assert calls == [4, 4, 2] and not file.exists()
    calls.clear()
    cache = cache_module.teacher_cache(str(file), texts, teacher, 16)
    assert calls == [2] and file.exists() and not list(setup.glob(".parts-cache.safetensors.parts-*"))
    np.testing.assert_allclose(np.stack([cache[t] for t in texts]), real(texts, teacher, max_length=16), atol=1e-6)


def test_v1_with_mismatched_heads_is_a_clear_error(setup, capsys):
    assert run(setup, "--student-hidden-size", "16", "--student-heads", "2", "--relations", "qk,vv",
               "--num-relation-heads", "0", "--steps", "1", out="v1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distill.py: error:") and "4" in err[0] and "2" in err[0], err


def test_kept_layers_resume_equals_straight_run(setup):
    flags = ("--student-layers", "1", "--steps", "4", "--num-relation-heads", "8")
    assert run(setup, *flags, out="straight") == 0
    assert run(setup, *flags, "--save-every", "2", "--keep-optimizer", "0", out="first") == 0
    assert run(setup, *flags, "--resume", str(setup / "first" / "step-0000002"), out="second") == 0
    a = flatten(load(setup / "straight" / "step-0000004").params)
    b = flatten(load(setup / "second" / "step-0000004").params)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_in_batch_scores_on_pairs_end_to_end_and_resumed(setup, capsys):
    """--ranking-weight alone on a (query, passage) pair file, the teacher cached, a narrower student from scratch
    (the scores need no projection): the score KL falls, the cache holds every distinct text of both columns, and a
    run resumed from its step-2 checkpoint ends where a straight one does."""
    pairs = setup / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": q, "positive": p, **({"negative": "x"} if i % 3 else {})}) + "\n"
                             for i, (q, p) in enumerate(batch_pairs(40))))  # pairs and triplets mixed
    flags = ("--data", str(pairs), "--student-hidden-size", "16", "--student-heads", "2", "--student-num-layers",
             "1", "--relations", "none", "--ranking-weight", "1",
             "--teacher-cache", str(setup / "pairs-teacher.safetensors"), "--lr", "3e-3",
             "--warmup", "2", "--no-dropout")
    assert run(setup, *flags, "--steps", "30", out="scores") == 0
    printed = capsys.readouterr().out
    assert "embedding 80 texts with the teacher once" in printed and "in-batch query -> passage scores" in printed
    records = [json.loads(line) for line in (setup / "scores" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["ranking"] for r in records if "ranking" in r]
    assert len(kl) == 30 and np.mean(kl[-5:]) < 0.5 * np.mean(kl[:5]), kl
    assert run(setup, *flags, "--steps", "4", out="straight-pairs") == 0
    assert run(setup, *flags, "--steps", "4", "--save-every", "2", "--keep-optimizer", "0", out="first-pairs") == 0
    assert run(setup, *flags, "--steps", "4", "--resume", str(setup / "first-pairs" / "step-0000002"),
               out="second-pairs") == 0
    a = flatten(load(setup / "straight-pairs" / "step-0000004").params)
    b = flatten(load(setup / "second-pairs" / "step-0000004").params)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_pairs_without_the_kl_sees_the_same_batches(setup):
    """--pairs: the embedding loss alone on the batches --ranking-weight would see. Step 1's embedding loss (before
    any update, the same student) is the same with and without the score KL beside it; the text pool instead
    (every distinct text of the file, 8 texts a batch) gives another."""
    pairs = setup / "pairs-mse.jsonl"
    pairs.write_text("".join(json.dumps([q, p]) + "\n" for q, p in batch_pairs(40)))
    flags = ("--student-hidden-size", "16", "--student-heads", "2", "--student-num-layers", "1", "--relations",
             "none", "--embedding-loss", "mse", "--steps", "1", "--log-every", "1", "--no-dropout", "--batch-size", "8")
    first = lambda out: json.loads((setup / out / "metrics.jsonl").read_text().splitlines()[0])["embedding"]
    assert run(setup, "--data", f"{pairs}:2", *flags, "--pairs", out="pairs-mse") == 0
    assert run(setup, "--data", f"{pairs}:2", *flags, "--ranking-weight", "1", out="pairs-kl") == 0
    assert run(setup, "--data", str(pairs), *flags, out="pool-mse") == 0
    assert first("pairs-mse") == first("pairs-kl") != first("pool-mse")


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        distill.main(["--help"])
    raw = capsys.readouterr().out
    text = " ".join(raw.split())
    for f in dataclasses.fields(distill.Args):
        assert "--" + f.name.replace("_", "-") in text
    # the docstring's continued command keeps its backslash-newline; --data takes pair and triplet files too
    assert "--embedding-loss mse \\\n        --teacher-cache teacher.safetensors" in raw
    assert "pair / triplet files (.jsonl[.gz], .tsv[.gz])" in text and "[-h] [--data DATA [DATA ...]]" in text
    assert set(distill.cli.field_comments(distill.Args)) == {f.name for f in dataclasses.fields(distill.Args)}
