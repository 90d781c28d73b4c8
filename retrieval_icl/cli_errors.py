"""How every `ricl` command reports bad input: one `error:` line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

import functools
from typing import Callable

import typer

from .errors import RiclError


def friendly_errors(fn: Callable) -> Callable:
    """Bad input ends in one line on stderr and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RiclError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)

    return wrapper
