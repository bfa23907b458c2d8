"""docs/figures.py draws every picture of docs/ (here with a tiny random model and a 2-step distillation): each PNG
is written, is a real image, and a second run gives the same bytes."""
import importlib.util
import sys

import pytest

from tests.conftest import DATA, REPO, STRICT, need
from tests.tiny import tiny_model


def load_script():
    spec = importlib.util.spec_from_file_location("figures", REPO / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["figures"] = module
    spec.loader.exec_module(module)
    return module


def test_every_figure_is_drawn_and_the_same_twice(tmp_path):
    need("matplotlib")
    if not (DATA / "stsb").is_dir():
        message = f"{DATA} not found (the figures draw real sentences)"
        pytest.fail(message) if STRICT else pytest.skip(message)
    from minilm.st.folder import save
    figures = load_script()
    model = tiny_model(tmp_path)
    save(model, tmp_path / "model")
    runs = []
    for run in ("first", "second"):
        out = tmp_path / run
        assert figures.main(["--model", str(tmp_path / "model"), "--out", str(out), "--steps", "2"]) == 0
        runs.append({p.name: p.read_bytes() for p in out.glob("*.png")})
    assert sorted(runs[0]) == sorted(f"{name}.png" for name in figures.FIGURES)
    for name, data in runs[0].items():
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000, name
        assert runs[1][name] == data, f"{name} differs between two runs"
