"""Label-balanced selection: any selector, run per label, so each label gets its share of the k slots."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import RiclError
from .base import Ranking, Selector, make_selector
from .checks import check_k, check_order


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
    fits_state = True

    def __init__(self, base: str = "knn", order: str = "nearest_last", seed: int = 0, **base_params: Any):
        if base == self.name:
            raise RiclError("balanced cannot wrap itself; expected another selector as base, e.g. base='knn'")
        self.base, self.order, self.seed, self.base_params = base, check_order(order), seed, base_params
        self._new_base()  # an unknown base or base parameter fails here, with the registry's message

    def _new_base(self) -> Selector:
        return make_selector(self.base, seed=self.seed, exclude_near_duplicates=self.exclude_near_duplicates,
                             **self.base_params)  # each label's part keeps the query's near-duplicates out too

    @property
    def uses_seed(self) -> bool:
        """False when the seed cannot change the selection."""
        return self.order == "random" or self._new_base().uses_seed

    def fit(self, index) -> "BalancedSelector":
        """Split the pool by label and fit one base selector per label; returns self."""
        from ..retrieval.index import DemoIndex

        super().fit(index)
        examples = index.examples
        vectors = index.embeddings(self.pool_.ids)  # (n, d), FAISS row order == examples order
        self.parts_: dict[int, Selector] = {}
        for label in sorted({ex.label for ex in examples}):
            rows = [r for r, ex in enumerate(examples) if ex.label == label]
            part = DemoIndex(index.encoder).build([examples[r] for r in rows], embeddings=vectors[rows])
            self.parts_[label] = self._new_base().fit(part)
        return self

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        return [self._merged(text, emb, k) for text, emb in zip(texts, embeddings)]

    def _merged(self, text: str, emb: np.ndarray, k: int) -> Ranking:
        """Each label's quota of demonstrations from its part, merged by cosine, most similar first."""
        ids: list[int] = []
        scores: list[float] = []
        for label, quota in self.quotas(text, emb, k).items():
            if quota:
                chosen = self.parts_[label].select_embedded([text], emb[None], quota)[0]
                ids += chosen.demo_ids
                scores += chosen.scores
        best = np.argsort(-np.asarray(scores), kind="stable")
        return [ids[i] for i in best], [scores[i] for i in best]

    def quotas(self, text: str, emb: np.ndarray, k: int) -> dict[int, int]:
        """Slots per label for one query (text and its unit embedding (d,)): round-robin, nearest label first."""
        available = {label: part.pool_.available(text) for label, part in self.parts_.items()}
        check_k(k, sum(available.values()))
        nearest = {label: float(part.index_.search(emb[None], 1)[0][0, 0]) for label, part in self.parts_.items()}
        preference = sorted(nearest, key=lambda label: (-nearest[label], label))
        quota = dict.fromkeys(preference, 0)
        while sum(quota.values()) < k:
            for label in preference:
                if quota[label] < available[label] and sum(quota.values()) < k:
                    quota[label] += 1
        return quota
