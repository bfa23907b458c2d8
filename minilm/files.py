"""Reading text and JSON files: one reader of each, so that every file the project reads fails the same way.

A text file is UTF-8 with one text per line: a leading BOM is dropped, lines end in '\\n' or '\\r\\n' (and only
there: str.splitlines would also split on \\x0b, \\x1c or U+2028, which are text here), and a name ending in .gz is
read through gzip. A bad byte is an error naming the file, the line and the column; '-' reads standard input.
"""
import gzip
import json
import pathlib
import sys
import zlib


def read_lines(path, bad_lines: list | None = None):
    """Yield (line number, text) for every line of a text file, lazily (1-based numbers; blank lines included).
    A line that is not UTF-8 raises ValueError("FILE:LINE: not valid UTF-8 (...)"), or, when `bad_lines` is a
    list, is appended to it as (line number, message) and skipped."""
    path = str(path)
    name = "<stdin>" if path == "-" else path
    if path == "-" and sys.stdin is None:  # started with file descriptor 0 closed
        raise ValueError("<stdin>: is closed; there is nothing to read")
    try:
        f = sys.stdin.buffer if path == "-" else (gzip.open if path.endswith(".gz") else open)(path, "rb")
    except IsADirectoryError:
        raise ValueError(f"{name}: is a folder, expected a text file with one text per line") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        for number, raw in enumerate(f, start=1):  # binary lines end at b"\n" only
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
                if not raw:  # only a BOM: an empty file
                    break
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                message = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                if bad_lines is None:
                    raise ValueError(f"{name}:{number}: {message}") from None
                bad_lines.append((number, message))
                continue
            yield number, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # BadGzipFile is an OSError: catch it first
        raise ValueError(f"{name}: not a valid gzip file ({e})") from None
    except IsADirectoryError:  # open() of a folder succeeds on some systems; reading it fails
        raise ValueError(f"{name}: is a folder, expected a text file with one text per line") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    finally:
        if path != "-":
            f.close()


def read_json(path, kind: type | None = None):
    """A JSON file; a bad file (or one whose top level is not `kind`: dict or list) is a ValueError naming it (and
    the line)."""
    try:
        value = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{path}: expected a JSON {'object' if kind is dict else 'array'}, "
                         f"got {type(value).__name__}")
    return value


def json_object(path, number: int, text: str, keys: tuple[str, ...]) -> dict:
    """One line of a JSON-lines file: an object holding `keys`, else a ValueError naming the file and line."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    if not isinstance(row, dict) or any(k not in row for k in keys):
        raise ValueError(f"{path}:{number}: expected an object with {', '.join(keys)}")
    return row
