"""The layout a reader relies on, read from the source with `ast`: the book (the recipe, minilm/ top level) is exactly
the README's list and imports nothing from the toolbox (the subpackages), there are no import cycles, each room of the
toolbox names its modules, every fast-path module says what it optimises and which test proves it equal, and nothing
cites a file outside the repository."""
import ast
import pathlib
import re

from tests.conftest import REPO

SCRIPTS = ("train.py", "distill.py", "embed.py")


def readme_book() -> list[str]:
    """The one list: the modules of the book (the recipe), in reading order, as the README's table after the line
    "**The book**" names them (`minilm/NAME.py`)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("**The book**"):].split("\n\n")[1]
    return re.findall(r"`minilm/(\w+)\.py`", table)


def toolbox_rooms() -> list[pathlib.Path]:
    return sorted(p.parent for p in (REPO / "minilm").glob("*/__init__.py"))


def module_files() -> dict[str, pathlib.Path]:
    """{"minilm.model": path, ..., "train": path}: the package's modules and the scripts."""
    files = {}
    for path in sorted((REPO / "minilm").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    files.update({name.removesuffix(".py"): REPO / name for name in SCRIPTS})
    return files


def imports(path: pathlib.Path, known: dict) -> set[str]:
    """The repository modules a file imports, at the top or inside functions (`from minilm import x` names the
    submodule minilm.x when there is one, else the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def test_the_book_is_the_top_level_of_minilm_and_as_many_files_as_the_readme_says():
    book = readme_book()
    top = sorted(p.stem for p in (REPO / "minilm").glob("*.py") if p.name != "__init__.py")
    assert sorted(book) == top, f"README's book {book} against minilm/*.py {top}"
    count = re.search(r"\*\*The book\*\*[^\n]*?(\w+) files", (REPO / "README.md").read_text()).group(1)
    words = {"eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
    assert words.get(count, count) == len(book), (count, len(book))


def test_the_book_imports_nothing_from_the_toolbox():
    """Every import of a book module, at the top or inside a function, is another book module: the recipe reads
    without the toolbox (sentence-transformers formats, tools, run machinery, extensions, the fast path)."""
    known = module_files()
    book = {f"minilm.{name}" for name in readme_book()}
    for name in sorted(book):
        bad = sorted(imports(known[name], known) - book - {"minilm"})
        assert not bad, f"{name} imports {bad}; the book must read without the toolbox"


# What only the toolbox knows: a parameter of a book function by one of these names would carry the toolbox into the
# book (the folder's Model, its head and prompts, the fast path's draw or forward).
TOOLBOX_WORDS = {"model", "head", "pooling", "normalize", "dense", "activations", "prompt", "skip", "forward",
                 "keep_mask", "progress", "fast"}


def test_no_book_signature_names_a_toolbox_concept():
    """Every parameter of every function of the book, read with `ast`: none is named for a toolbox concept
    (TOOLBOX_WORDS), and no annotation names a class the toolbox defines (Model, Head, Forward, ...)."""
    classes = {n.name for p in (REPO / "minilm").glob("*/*.py") for n in ast.parse(p.read_text()).body
               if isinstance(n, ast.ClassDef)}
    found = []
    for name in readme_book():
        path = REPO / "minilm" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                    names = {arg.arg} | {n.id for n in ast.walk(arg.annotation or ast.Pass()) if isinstance(n, ast.Name)}
                    if names & (TOOLBOX_WORDS | classes):
                        found.append(f"minilm/{name}.py:{node.lineno} {node.name}({arg.arg})")
    assert not found, found


def test_each_toolbox_room_lists_its_modules():
    """Each subpackage of minilm/ opens with a docstring that names every module in it (and no other)."""
    assert {p.name for p in toolbox_rooms()} >= {"fast", "st", "tools", "run"}
    for room in toolbox_rooms():
        doc = ast.get_docstring(ast.parse((room / "__init__.py").read_text())) or ""
        named = set(re.findall(r"^[ \t]*(\w+)\.py[ \t]", doc, re.M))  # a line that starts with a module's name
        present = {p.stem for p in room.glob("*.py") if p.name != "__init__.py"}
        assert named == present, f"minilm/{room.name}/__init__.py names {sorted(named)}, has {sorted(present)}"


def test_the_check_above_can_fail(tmp_path):
    """The parser sees an import hidden inside a function, as a book module might have one."""
    (tmp_path / "m.py").write_text("def f():\n    from minilm.fast.embedding import plan_packed\n")
    assert imports(tmp_path / "m.py", module_files()) == {"minilm.fast.embedding"}


NOT_CODE = {"runs", "out", "out-distill", "build", "venv"}  # run outputs and environments beside the code


def every_python_file() -> dict[str, pathlib.Path]:
    """Every Python file of the repository by its dotted path: the package and the scripts (module_files), and every
    other folder's files ("tests.tiny", "benchmarks.host", "experiments.retrieval_data", "docs.journeys")."""
    files = module_files()
    for folder in sorted(REPO.iterdir()):
        if folder.is_dir() and folder.name != "minilm" and folder.name not in NOT_CODE \
                and not folder.name.startswith(".") and not folder.name.endswith(".egg-info"):
            for path in sorted(folder.rglob("*.py")):
                parts = path.relative_to(REPO).with_suffix("").parts
                files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph(known: dict) -> dict[str, set[str]]:
    """{module: the repository modules it imports}. A name resolves as the file's own sys.path would have it: the
    repository root first (`minilm.x`, `train`, `tests.tiny`), then the file's folder (a script importing a sibling
    by its plain name, `import host` in benchmarks/), then the one other folder holding it (a test that put
    experiments/ on sys.path)."""
    graph = {}
    for name, path in known.items():
        folder = ".".join(path.parent.relative_to(REPO).parts)

        def resolve(module):
            others = [k for k in known if k.endswith("." + module) and k.count(".") == module.count(".") + 1]
            for candidate in (module, f"{folder}.{module}", *(others if len(others) == 1 else [])):
                if candidate in known:
                    return candidate
            return None

        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.update(resolve(f"{node.module}.{alias.name}") or resolve(node.module) for alias in node.names)
        graph[name] = found - {None, name}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle found (a -> b -> a), or None."""
    state = {}  # name -> "open" while on the path, "done" after

    def visit(name, path):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[name] = "done"
        return None

    for name in graph:
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_no_import_cycles():
    """Anywhere: the package, the scripts, benchmarks/, experiments/, docs/*.py and tests/."""
    known = every_python_file()
    assert {"minilm.model", "train", "tests.tiny", "benchmarks.host", "experiments.retrieval_data",
            "docs.journeys"} <= set(known)
    graph = import_graph(known)
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_every_folder_and_can_fail():
    """A sibling imported by its plain name is an edge (benchmarks/embed_bench.py: `import op_profile`), and a
    planted cycle between two scripts of one folder is found."""
    graph = import_graph(every_python_file())
    assert {"benchmarks.op_profile", "benchmarks.host"} <= graph["benchmarks.embed_bench"]
    assert "experiments.retrieval_data" in graph["tests.test_retrieval_data"]
    planted = import_cycle({**graph, "benchmarks.host": {"benchmarks.embed_bench"}})
    assert set(planted) == {"benchmarks.embed_bench", "benchmarks.host"}, planted


def test_fast_path_modules_say_what_they_optimise_and_which_test_proves_it():
    for path in sorted((REPO / "minilm" / "fast").glob("*.py")):
        if path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert doc.startswith("An optimisation of"), f"{path.name}: {doc[:60]!r}"
        named = re.findall(r"tests/(test_\w+\.py)", doc.split("\n\n")[0])
        assert named and all((REPO / "tests" / t).is_file() for t in named), (path.name, named)


def test_nothing_cites_a_file_outside_the_repository():
    for path in [*(REPO / "minilm").rglob("*.py"), *(REPO / s for s in SCRIPTS)]:
        text = path.read_text()
        assert "ALGORITHMS" not in text and "../shared" not in text, path
    cited = {m for path in [*(REPO / "minilm").rglob("*.py"), *(REPO / s for s in SCRIPTS)]
             for m in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    assert cited and all((REPO / doc).is_file() for doc in cited), sorted(cited)


def test_run_outputs_are_ignored_by_git():
    """The README trains into runs/ and the default output folders are out/ and out-distill/: none is committed."""
    ignored = (REPO / ".gitignore").read_text().split()
    assert {"/runs/", "/out/", "/out-distill/"} <= set(ignored)


def test_the_learners_tier_covers_every_book_file():
    """The `-m book` tier (tests marked book, a whole file or single tests) imports every module of the book: no
    chapter is left without a proof in the learner's two minutes."""
    known = module_files()
    covered = set()
    for path in (REPO / "tests").glob("test_*.py"):
        if "pytest.mark.book" in path.read_text():
            covered |= imports(path, known)
    missing = sorted({f"minilm.{name}" for name in readme_book()} - covered)
    assert not missing, f"no test of the learner's tier imports {missing}"
