"""`Example`, one labelled input, and what is done to a list of them before any task or file is involved: a seeded
sample and a fingerprint (no reader, no torch)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Sequence

from ..errors import RiclError


@dataclass(frozen=True)
class Example:
    """One labelled input: `texts` holds the task's text fields in order (one or two)."""

    id: int
    texts: tuple[str, ...]
    label: int

    @property
    def text(self) -> str:
        """The text an encoder embeds: the fields joined by a newline."""
        return "\n".join(self.texts)


def sample_examples(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded subset of n examples in their original order (all of them when n is None or too large)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise RiclError(f"n must be a positive integer, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of the examples' ids, texts and labels: two pools with the same fingerprint are the same."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.texts, ex.label]).encode())
    return h.hexdigest()[:16]
