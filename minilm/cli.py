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
    """{field: the comment on its line} from the class source ('lr: float = 2e-5  # peak learning rate')."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        code, _, comment = line.partition("  # ")
        name = code.strip().split(":")[0]
        if comment and name.isidentifier():
            comments[name] = comment.strip()
    return comments


def parse(cls, argv=None, description: str | None = None):
    """Parse argv into an instance of the dataclass `cls`. Bool fields are --flag / --no-flag; list fields
    (tuple types) take one value per occurrence or comma-separated values."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints, comments, tuples = typing.get_type_hints(cls), field_comments(cls), {}
    for f in dataclasses.fields(cls):
        flag, kind, default = "--" + f.name.replace("_", "-"), hints[f.name], f.default
        help_text = f"{comments.get(f.name, '')} (default: {default})"
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(base) is tuple:
            p.add_argument(flag, nargs="+", default=default, help=help_text + "; several values, or comma-separated")
            tuples[f.name] = typing.get_args(base)[0]
        else:
            p.add_argument(flag, type=base, default=default, help=help_text)
    values = vars(p.parse_args(argv))
    for name, item in tuples.items():
        if isinstance(values[name], list):
            try:
                values[name] = tuple(item(x) for v in values[name] for x in v.split(",") if x)
            except ValueError as e:
                p.error(f"--{name.replace('_', '-')}: {e}")
    return cls(**values), p


def print_args(args, file=sys.stdout) -> None:
    for f in dataclasses.fields(args):
        print(f"  {f.name} = {getattr(args, f.name)!r}", file=file)

