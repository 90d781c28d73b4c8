"""Label-balanced selection: any selector, run per label, so each label gets its share of the k slots."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..errors import RiclError
from .base import ORDERS, Selection, Selector, make_selector, order_selection, text_seed


class BalancedSelector(Selector):
    """Each of the L labels in the pool gets floor(k/L) or ceil(k/L) demonstrations, chosen by `base`.

    `fit` splits the pool by label and fits one `base` selector (built with `seed` and `base_params`) on each
    part. The k mod L extra slots go to the labels whose nearest example is most similar to the query; a label
    with too few examples gives its slots to the others. The merged demonstrations are arranged by `order`
    from their cosine to the query.

    >>> BalancedSelector(base="mmr", lambda_mult=0.7).base_params
    {'lambda_mult': 0.7}
    """

    name = "balanced"

    def __init__(self, base: str = "knn", order: str = "nearest_last", seed: int = 0, **base_params: Any):
        if base == self.name:
            raise RiclError("balanced cannot wrap itself; expected another selector as base, e.g. base='knn'")
        if order not in ORDERS:
            raise RiclError(f"unknown order {order!r}; expected one of {ORDERS}")
        self.base, self.order, self.seed, self.base_params = base, order, seed, base_params
        self._new_base()  # an unknown base or base parameter fails here, with the registry's message

    def _new_base(self) -> Selector:
        return make_selector(self.base, seed=self.seed, **self.base_params)

    @property
    def uses_seed(self) -> bool:  # type: ignore[override]
        return self.order == "random" or self._new_base().uses_seed

    def fit(self, index) -> "BalancedSelector":
        """Split the pool by label and fit one base selector per label; returns self."""
        from ..index import DemoIndex

        super().fit(index)
        examples = index.examples
        vectors = index.embeddings(index.ids)  # (n, d), FAISS row order == examples order
        self.parts_: dict[int, Selector] = {}
        self.text_counts_: dict[int, Counter] = {}
        for label in sorted({ex.label for ex in examples}):
            rows = [r for r, ex in enumerate(examples) if ex.label == label]
            part = DemoIndex(index.encoder).build([examples[r] for r in rows], embeddings=vectors[rows])
            self.parts_[label] = self._new_base().fit(part)
            self.text_counts_[label] = Counter(examples[r].text for r in rows)
        self.fitted_size_ = len(index)
        return self

    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        if self.fitted_size_ != len(self.index_):
            raise RiclError(f"the index has {len(self.index_)} examples but balanced was fitted on "
                            f"{self.fitted_size_}; call fit(index) again after adding examples")
        return [self._one(text, emb, k) for text, emb in zip(texts, embeddings)]

    def _one(self, text: str, emb: np.ndarray, k: int) -> Selection:
        ids: list[int] = []
        scores: list[float] = []
        for label, quota in self.quotas(text, emb, k).items():
            if quota:
                chosen = self.parts_[label]._select([text], emb[None], quota)[0]
                ids += chosen.demo_ids
                scores += chosen.scores
        best = np.argsort(-np.asarray(scores), kind="stable")
        return order_selection([ids[i] for i in best], [scores[i] for i in best], self.order,
                               text_seed(self.seed, text))

    def quotas(self, text: str, emb: np.ndarray, k: int) -> dict[int, int]:
        """Slots per label for one query (text and its unit embedding (d,)): round-robin, nearest label first."""
        available = {label: sum(counts.values()) - counts[text] for label, counts in self.text_counts_.items()}
        if sum(available.values()) < k:
            raise RiclError(f"k={k} is larger than the pool without the query ({sum(available.values())} examples)")
        nearest = {label: float(part.index_.search(emb[None], 1)[0][0, 0]) for label, part in self.parts_.items()}
        preference = sorted(nearest, key=lambda label: (-nearest[label], label))
        quota = dict.fromkeys(preference, 0)
        while sum(quota.values()) < k:
            for label in preference:
                if quota[label] < available[label] and sum(quota.values()) < k:
                    quota[label] += 1
        return quota
