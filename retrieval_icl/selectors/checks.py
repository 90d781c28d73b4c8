"""Parameter and request checks shared by every selector: one function and one message per kind of mistake."""

from __future__ import annotations

from typing import Any

from ..errors import RiclError

ORDERS = ("nearest_last", "nearest_first", "random")


def check_order(order: Any) -> str:
    """`order` if it is one of ORDERS."""
    if order not in ORDERS:
        raise RiclError(f"unknown order {order!r}; expected one of {ORDERS}")
    return order


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to a config


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> Any:
    """`value` if it is an integer > 0 (or None when `allow_none`)."""
    if value is None and allow_none:
        return value
    if not _is_int(value) or value <= 0:
        raise RiclError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_count(name: str, value: Any) -> int:
    """`value` if it is an integer >= 0."""
    if not _is_int(value) or value < 0:
        raise RiclError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_in_range(name: str, value: Any, low: float, high: float, hint: str = "") -> Any:
    """`value` if it is a number in [low, high]; `hint` says what the ends mean."""
    if not _is_number(value) or not low <= value <= high:
        raise RiclError(f"{name} must be a number in [{low}, {high}]{hint}, got {value!r}")
    return value


def check_fraction(name: str, value: Any, hint: str = "") -> Any:
    """`value` if it is a number in [0, 1]."""
    return check_in_range(name, value, 0, 1, hint)


def check_greater(name: str, value: Any, bound: float) -> Any:
    """`value` if it is a number > bound."""
    if not _is_number(value) or value <= bound:
        raise RiclError(f"{name} must be a number greater than {bound}, got {value!r}")
    return value


def check_k(k: int, available: int) -> None:
    """Refuse a k larger than the pool examples a query may get (those without its text or a shared field)."""
    if k > available:
        raise RiclError(f"k={k} is larger than the pool without the query ({available} examples)")


def check_fresh(name: str, fitted_size: int, index_size: int) -> None:
    """Refuse an index whose size changed since a selector fitted state on it."""
    if fitted_size != index_size:
        raise RiclError(f"the index has {index_size} examples but {name} was fitted on {fitted_size}; "
                        "call fit(index) again after adding examples")
