"""Config files: YAML read with `yaml.safe_load` (never executed), `include:` of a base file, one-line errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from .errors import RiclError


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def read_yaml(path: Path) -> dict:
    """A YAML mapping; `include: other.yaml` (relative to the file) is merged underneath."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RiclError(f"{path}: no such file")
    except yaml.YAMLError as e:
        raise RiclError(f"{path}: not valid YAML: {e}")
    if not isinstance(data, dict):
        raise RiclError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if "include" in data:
        data = deep_merge(read_yaml(path.parent / data.pop("include")), data)
    return data


def validation_message(path: Path, error: ValidationError) -> str:
    """The first validation error as `file: field.path: message`."""
    err = error.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{path}: {where}: {err['msg']}" if where else f"{path}: {err['msg']}"
