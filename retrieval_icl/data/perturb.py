"""Shifted demonstration pools: seeded perturbations of the texts (typos, rare-word substitution, shuffled words)."""

from __future__ import annotations

import random
import string
from dataclasses import replace
from typing import Callable, Sequence

from ..errors import RiclError
from .examples import Example

# Real but rare English words: substituting them moves text away from what a model saw often in pretraining.
RARE_WORDS = ("abecedarian", "borborygmus", "callipygian", "defenestrate", "erinaceous",
              "floccinaucinihilipilification", "gasconade", "hircine", "impignorate", "jentacular", "kakistocracy",
              "lethologica", "mumpsimus", "nudiustertian", "oxter", "pauciloquent", "quomodocunque", "recumbentibus",
              "snollygoster", "tittynope", "ultracrepidarian", "vomitory", "widdershins", "xertz", "yarborough",
              "zoanthropy")


def typos(text: str, rate: float, rng: random.Random) -> str:
    """Each word longer than 2 letters, with probability `rate`, gets two adjacent letters swapped or one replaced."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) > 2 and rng.random() < rate:
            j = rng.randrange(len(word) - 1)
            if rng.random() < 0.5:
                word = word[:j] + word[j + 1] + word[j] + word[j + 2:]
            else:
                word = word[:j] + rng.choice(string.ascii_lowercase) + word[j + 1:]
            words[i] = word
    return " ".join(words)


def rare_words(text: str, rate: float, rng: random.Random) -> str:
    """Each word, with probability `rate`, is replaced by a rare English word."""
    return " ".join(rng.choice(RARE_WORDS) if rng.random() < rate else w for w in text.split(" "))


def shuffle_words(text: str, rate: float, rng: random.Random) -> str:
    """The words in random order (rate is ignored: the whole text is shuffled)."""
    words = text.split(" ")
    rng.shuffle(words)
    return " ".join(words)


PERTURBATIONS: dict[str, Callable[[str, float, random.Random], str]] = {
    "typos": typos, "rare_words": rare_words, "shuffle": shuffle_words}


def perturb_examples(examples: Sequence[Example], kind: str, rate: float, seed: int) -> list[Example]:
    """Copies of the examples with every text field perturbed; ids and labels are kept."""
    if kind not in PERTURBATIONS:
        raise RiclError(f"unknown perturbation {kind!r}; known: {sorted(PERTURBATIONS)}")
    if not 0.0 <= rate <= 1.0:
        raise RiclError(f"perturbation rate must be in [0, 1], got {rate}")
    fn, rng = PERTURBATIONS[kind], random.Random(seed)
    return [replace(ex, texts=tuple(fn(t, rate, rng) for t in ex.texts)) for ex in examples]
