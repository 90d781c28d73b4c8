"""Config files: YAML read with a safe loader (never executed), `include:` of a base file, one-line errors; the
CLI's `--param KEY=VALUE` values are read by the same safe loader.

Also the checks every file reader shares (tasks.py's JSONL/CSV readers use them): files are UTF-8, a UTF-8
byte-order mark is accepted and dropped, and a missing path, a directory, UTF-16 or undecodable bytes end in a
RiclError naming the file and line.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import yaml
from pydantic import ValidationError

from .errors import RiclError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def key_values(items: list[str]) -> dict:
    """`--param` KEY=VALUE strings as a dict, each value parsed as YAML (numbers, booleans, lists)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RiclError(f"--param {item!r}: expected KEY=VALUE, e.g. lambda_mult=0.3")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise RiclError(f"--param {item!r}: the value is not valid YAML") from None
    return out


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def check_file(path: Path, expected: str) -> None:
    """A missing path or a directory is an error saying what file was expected there."""
    if not path.exists():
        raise RiclError(f"{path}: no such file; expected {expected}")
    if path.is_dir():
        raise RiclError(f"{path}: is a directory; expected {expected}")


def _read_bytes(path: Path, expected: str) -> bytes:
    """The file's bytes; an unreadable file is an error naming it."""
    check_file(path, expected)
    try:
        return path.read_bytes()
    except OSError as e:
        raise RiclError(f"{path}: cannot read ({e.strerror}); expected {expected}")


def not_utf8(path: Path, line_no: int, line: bytes, column: int) -> RiclError:
    """The error for a line whose byte at `column` (0-based) does not decode; UTF-16 gets its own hint."""
    if line_no == 1 and line.startswith(_UTF16_BOMS):
        return RiclError(f"{path}:1: not UTF-8 text: it starts with a UTF-16 byte-order mark; save the file as UTF-8")
    return RiclError(f"{path}:{line_no}: not UTF-8 text (byte {line[column]:#04x} at column {column + 1}); "
                     "save the file as UTF-8")


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text with newlines translated as `Path.read_text` does, so a valid file parses as it always has."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        raise not_utf8(path, raw.count(b"\n", 0, e.start) + 1, raw[start:], e.start - start)
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _Loader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, except that a value failing to construct (`2020-02-30`, `!!bool x`) names its line."""

    def construct_object(self, node: yaml.Node, deep: bool = False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, ArithmeticError, LookupError) as e:  # `!!int` with no digits: IndexError
            kind = node.tag.rsplit(":", 1)[-1]  # tag:yaml.org,2002:timestamp -> timestamp
            raise yaml.constructor.ConstructorError(None, None, f"bad {kind} value ({e})", node.start_mark)


def _yaml_message(path: Path, text: str, error: yaml.YAMLError) -> str:
    """One line: `file:line: not valid YAML (problem, column c)`, and the usual cause when it is a tab."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        problem = ", ".join(p for p in (error.context, error.problem) if p) or "syntax error"
        line, where = mark.line + 1, f"{problem}, column {mark.column + 1}"
    else:  # a ReaderError: a character YAML does not allow, given by its position in the text
        line, where = text.count("\n", 0, getattr(error, "position", 0)) + 1, str(error).split("\n")[0]
    hint = "; indent with spaces, YAML does not allow tabs" if "\\t" in where else ""
    return f"{path}:{line}: not valid YAML ({' '.join(where.split())}){hint}"


def _load(path: Path) -> object:
    """The YAML document in a file, whatever its type."""
    text = _decode(path, _read_bytes(path, "a YAML file"))
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise RiclError(_yaml_message(path, text, e))
    except RecursionError:
        raise RiclError(f"{path}: not valid YAML (nested too deeply)")


def _mapping(path: Path, data: object) -> dict:
    """`data` if it is a mapping with string keys, the shape every config has; otherwise an error saying so."""
    if data is None:
        raise RiclError(f"{path}: the file is empty; expected a mapping of keys (like `name: ...`)")
    if not isinstance(data, dict):
        raise RiclError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise RiclError(f"{path}: top-level key {key!r} is not a string ({type(key).__name__}); "
                            "expected names like `name:`")
    return data


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    """read_yaml, given the files that included this one, so that a cycle is an error rather than a recursion."""
    data = _mapping(path, _load(path))
    chain += (path.resolve(),)
    if "include" not in data:
        return data
    include = data.pop("include")
    if not isinstance(include, str):
        raise RiclError(f"{path}: include: expected a file name, got {type(include).__name__}")
    base = path.parent / include
    check_file(base, f"a YAML file, the include of {path}")
    if base.resolve() in chain:
        cycle = " -> ".join(p.name for p in chain + (base,))
        raise RiclError(f"{path}: include: {include} makes a cycle ({cycle}); expected a chain of base files")
    return deep_merge(_read_yaml(base, chain), data)


def read_yaml(path: Path) -> dict:
    """A YAML mapping; `include: other.yaml` (relative to the file) is merged underneath."""
    return _read_yaml(Path(path), ())


def validation_message(path: Path, error: ValidationError) -> str:
    """The first validation error as `file: field.path: message`."""
    err = error.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{path}: {where}: {err['msg']}" if where else f"{path}: {err['msg']}"
