"""distill.py: the step on 8 virtual CPU devices and on packed rows against one device with padded rows (loss and
gradients within 1e-5), students made three ways, and the script end to end on tiny models and text made here."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill
from minilm import parallel, runs
from minilm.fast.packing import pack_columns
from minilm.checkpoint import load
from minilm.model import flatten
from minilm.relations import parse_relations
from tests.tiny import DATA_WORDS, distill_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return distill_folder(tmp_path_factory.mktemp("distill"))


def batch(teacher, parts: int, pack: bool, n=16, seed=0):
    """n random texts, padded (one a row, segments = mask) or packed, each of `parts` device slices packed on its own
    as distill.py does."""
    rng = np.random.default_rng(seed)
    texts = [(" ".join(rng.choice(DATA_WORDS, rng.integers(1, 12))),) for _ in range(n)]
    if pack:
        packed = pack_columns(teacher.tokenizer, texts, 24, parts)
        assert packed.segments_RL.max() > 1  # several texts share a row
        return packed
    return runs.pad_columns(teacher.tokenizer, texts, 24)


@pytest.mark.parametrize("relations, r", [("qq,kk,vv", 8), ("qk,vv", None), ("qq:1,vv:0.5", 4)])
def test_eight_devices_and_packing_equal_one_padded_device(setup, relations, r):
    teacher = load(setup / "teacher")
    if r is None:  # v1 needs equal head counts: a student of teacher layers
        student = distill.make_student(distill.Args(student_layers=(1,)), teacher)
    else:  # v2: a narrower student with other heads, from scratch
        student = distill.make_student(distill.Args(student_hidden_size=16, student_heads=2, student_num_layers=1,
                                                    seed=1), teacher)
    rel = parse_relations(relations)
    heads = distill.relation_heads(rel, teacher.config, student.config, r)
    kw = dict(t_cfg=teacher.config, s_cfg=student.config, relations=rel, heads=heads, t_layer=1, s_layer=0)
    one = jax.jit(jax.value_and_grad(functools.partial(distill.device_loss, axis_name=None, **kw), has_aux=True))
    mesh = parallel.make_mesh(8)
    eight = jax.jit(distill.make_loss_and_grads(mesh, **kw))  # distill.py's own shard_map step
    on_device = lambda b: jax.tree.map(jnp.asarray, b)
    (l1, parts1), g1 = one(student.params, teacher.params, on_device(batch(teacher, 1, pack=False)), None)
    assert float(l1) > 1e-6 and parts1.keys() == {name for name, _ in rel}
    g1 = flatten(g1)
    results = {"1 device, packed": one(student.params, teacher.params, on_device(batch(teacher, 1, pack=True)), None)}
    for pack in (False, True):
        results[f"8 devices, {'packed' if pack else 'padded'}"] = eight(
            parallel.replicate(student.params, mesh), parallel.replicate(teacher.params, mesh),
            parallel.shard_batch(batch(teacher, 8, pack), mesh), None)
    for name, ((loss, parts), grads) in results.items():
        assert abs(float(l1) - float(loss)) <= 1e-5, name
        assert all(abs(float(parts1[k]) - float(parts[k])) <= 1e-5 for k in parts1), name
        grads = flatten(grads)
        worst = max(float(jnp.abs(g1[k] - grads[k]).max()) for k in g1)
        assert worst <= 1e-5, (name, worst)


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


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        distill.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(distill.Args):
        assert "--" + f.name.replace("_", "-") in text
    assert set(distill.cli.field_comments(distill.Args)) == {f.name for f in dataclasses.fields(distill.Args)}
