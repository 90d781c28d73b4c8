import random

import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.data.perturb import RARE_WORDS, perturb_examples, rare_words, shuffle_words, typos
from retrieval_icl.errors import RiclError

TEXT = "the film is a gorgeous and moving portrait of a family in crisis"


def test_typos_change_only_letters_inside_words_at_the_rate():
    out = typos(TEXT, 1.0, random.Random(0))
    words, changed = TEXT.split(), out.split()
    assert len(changed) == len(words)
    assert all(len(a) == len(b) for a, b in zip(words, changed))
    assert sum(a != b for a, b in zip(words, changed) if len(a) > 2) >= 8
    assert typos(TEXT, 0.0, random.Random(0)) == TEXT


def test_rare_words_and_shuffle():
    out = rare_words(TEXT, 1.0, random.Random(0)).split()
    assert all(w in RARE_WORDS for w in out) and len(out) == len(TEXT.split())
    shuffled = shuffle_words(TEXT, 0.0, random.Random(1))
    assert sorted(shuffled.split()) == sorted(TEXT.split()) and shuffled != TEXT


def test_perturb_examples_keeps_ids_and_labels_and_is_seeded():
    examples = [Example(7, (TEXT, "a second field here"), 1)]
    a = perturb_examples(examples, "typos", 0.5, seed=3)
    assert a == perturb_examples(examples, "typos", 0.5, seed=3) != perturb_examples(examples, "typos", 0.5, seed=4)
    assert (a[0].id, a[0].label, len(a[0].texts)) == (7, 1, 2) and a[0].texts != examples[0].texts
    with pytest.raises(RiclError, match="unknown perturbation 'blur'"):
        perturb_examples(examples, "blur", 0.1, 0)
