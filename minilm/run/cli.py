"""A frozen dataclass of options -> command-line flags, the way train.py and distill.py declare their settings.

Each field becomes `--field-name` with the field's default; the comment after the field in the source is its help
text, so the dataclass reads like nanoGPT's block of settings and `--help` documents every flag.
"""
import argparse
import dataclasses
import inspect
import sys
import typing


def field_comments(cls) -> dict[str, str]:
    """{field: the comment on its line} from the class source ('lr: float = 2e-5  # peak learning rate'), and from
    the classes it extends; a field declared again takes the comment of the most derived class."""
    comments = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        name = None
        for line in inspect.getsource(klass).splitlines():
            if name and line.strip().startswith("# "):  # a comment line on its own continues the field's help
                comments[name] += " " + line.strip()[2:]
                continue
            code, _, comment = line.partition("  # ")
            name = code.strip().split(":")[0]
            if comment and name.isidentifier() and not code.lstrip().startswith("class "):
                comments[name] = comment.strip()
            else:
                name = None
    return comments


def parse(cls, argv=None, description: str | None = None):
    """Parse argv -> (an instance of the dataclass `cls`, the parser, the names of the fields given on the command
    line). Bool fields are --flag / --no-flag; list fields (tuple types) take one value per occurrence or
    comma-separated values; Literal fields take one of their values. What a run needs (--data) each script checks,
    with the rest of its options, after a resumed run's saved options are read back."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints, comments, tuples = typing.get_type_hints(cls), field_comments(cls), {}
    inherited = {f.name for base in cls.__bases__ if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name in inherited)  # the script's own options first
    for f in fields:
        flag, kind, default = "--" + f.name.replace("_", "-"), hints[f.name], f.default
        comment = comments.get(f.name, "")
        help_text = comment if "default" in comment or default in (None, ()) else f"{comment} (default: {default})"
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(base) is typing.Literal:
            p.add_argument(flag, choices=typing.get_args(base), default=default, help=help_text)
        elif typing.get_origin(base) is tuple:
            p.add_argument(flag, nargs="+", default=default,
                           help=help_text + "; several values, or comma-separated")
            tuples[f.name] = typing.get_args(base)[0]
        else:
            p.add_argument(flag, type=base, default=default, help=help_text)
    values = vars(p.parse_args(argv))
    for action in p._actions:  # parse again with no defaults: what is left was given
        action.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(argv)))
    for name, item in tuples.items():
        if isinstance(values[name], list):
            try:
                values[name] = tuple(item(x) for v in values[name] for x in v.split(",") if x)
            except ValueError as e:
                p.error(f"--{name.replace('_', '-')}: {e}")
    return cls(**values), p, given


def index(i: int, n: int, flag: str) -> int:
    """A flag's index into n items (layers), negative from the end as in Python: -1 is the last."""
    if not -n <= i < n:
        raise ValueError(f"{flag} {i} is outside {-n}..{n - 1}")
    return i % n
