"""Representative demonstrations chosen once for the whole pool: k-means medoids and vote-k.

For settings where only a few examples can be labelled: the selector ranks the pool without looking at any
query; the first `budget` examples of that ranking are the labelled set (`budget=None`: k of them, so every
query gets the same k). Each query takes the k of the labelled set most similar to it, arranged by `order`.
An example with the query's exact text is skipped and the next one in the ranking takes its place.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from ..errors import RiclError
from .arrays import best_first, cosines, first_kept
from .base import Ranking, Selector
from .checks import check_count, check_greater, check_order, check_positive_int


class RepresentativeSelector(Selector):
    """Shared machinery: a query-independent ranking of the pool, cached per labelled-set size."""

    fits_state = True

    def __init__(self, budget: int | None = None, order: str = "nearest_last", seed: int = 0):
        self.budget = check_positive_int("budget", budget, allow_none=True)
        self.order, self.seed = check_order(order), seed

    def fit(self, index) -> "RepresentativeSelector":
        """Remember the pool; rankings are computed on first use for each labelled-set size."""
        super().fit(index)
        self.rankings_: dict[int, np.ndarray] = {}
        return self

    def prepared(self, k: int) -> bool:
        return self._size(k) in self.rankings_

    def prepare(self, k: int) -> "RepresentativeSelector":
        self._ranking(self._size(k))
        return self

    def prepared_ks(self) -> list[int]:
        return list(self.rankings_)  # a ranking of size m serves k = m

    def _size(self, k: int) -> int:
        """The labelled set's size for a select of k (needs fit)."""
        self._fitted_index()
        return min(self.budget or k, len(self.pool_))

    def representatives(self, m: int) -> list[int]:
        """The ids of the m examples to label, most representative first (needs fit)."""
        self._fitted_index()
        if isinstance(m, bool) or not isinstance(m, int) or not 0 < m <= len(self.pool_):
            raise RiclError(f"m must be an integer in 1..{len(self.pool_)} (the pool size), got {m!r}")
        return [int(self.pool_.ids[r]) for r in self._ranking(m)[:m]]

    def _ranking(self, m: int) -> np.ndarray:
        if m not in self.rankings_:
            self.rankings_[m] = self._rank_pool(self.index_.embeddings(self.pool_.ids), m)
        return self.rankings_[m]

    @abstractmethod
    def _rank_pool(self, vectors: np.ndarray, m: int) -> np.ndarray:
        """Every pool row (n,), the labelled set of size m first; vectors are the pool's unit rows (n, d)."""

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        m = self.budget or k
        if k > m:
            raise RiclError(f"k={k} is larger than the labelled budget={m}; raise budget or lower k")
        ranking = self._ranking(self._size(k))
        return [self._nearest_labelled(text, emb, k, m, ranking) for text, emb in zip(texts, embeddings)]

    def _nearest_labelled(self, text: str, emb: np.ndarray, k: int, m: int, ranking: np.ndarray) -> Ranking:
        """The k of the query's labelled set (the first m of the ranking without its text) nearest to it."""
        labelled = [int(self.pool_.ids[r]) for r in first_kept(ranking, self.pool_.keep(text), m)]
        similarity = cosines(self.index_, labelled, emb)  # (m,)
        best = best_first(similarity)[:k]
        return [labelled[i] for i in best], [float(similarity[i]) for i in best]


class KMeansSelector(RepresentativeSelector):
    """Medoids of m k-means clusters (seeded), largest cluster first.

    The medoid is the member with the largest summed cosine to its cluster, i.e. the largest dot product with
    the cluster mean. Behind the medoids come every cluster's second most central member, then the third, ...

    >>> KMeansSelector(budget=16, seed=1).budget
    16
    """

    name = "kmeans"
    seeded_choice = True

    def __init__(self, budget: int | None = None, n_init: int = 4, order: str = "nearest_last", seed: int = 0):
        super().__init__(budget=budget, order=order, seed=seed)
        self.n_init = check_positive_int("n_init", n_init)

    def _rank_pool(self, vectors: np.ndarray, m: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=m, n_init=self.n_init, random_state=self.seed).fit_predict(vectors)
        # A pool with fewer distinct points than m leaves some clusters empty.
        members = (np.flatnonzero(labels == c) for c in range(m))
        clusters = [_by_centrality(vectors, rows) for rows in members if len(rows)]
        clusters.sort(key=lambda rows: (-len(rows), rows[0]))
        depth = max(len(rows) for rows in clusters)
        return np.array([rows[d] for d in range(depth) for rows in clusters if d < len(rows)], dtype=np.int64)


def _by_centrality(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of one cluster, the medoid first: by dot product with the cluster mean, descending."""
    centrality = vectors[rows] @ vectors[rows].mean(axis=0)
    return rows[np.argsort(-centrality, kind="stable")]


class VoteKSelector(RepresentativeSelector):
    """Vote-k (Su et al. 2023), graph stage: greedily pick the example most voted for by the rest.

    Every example v votes for its `n_neighbors` nearest neighbours with weight rho^-c, where c counts the
    already picked examples among v's neighbours, so regions already covered vote less. Deterministic: ties
    go to the earlier pool row. Behind the m picks come `backups` more greedy picks, then the rest by votes.

    >>> VoteKSelector(n_neighbors=10, rho=10.0).rho
    10.0
    """

    name = "votek"

    def __init__(self, budget: int | None = None, n_neighbors: int = 10, rho: float = 10.0, backups: int = 16,
                 order: str = "nearest_last", seed: int = 0):
        super().__init__(budget=budget, order=order, seed=seed)
        self.n_neighbors = check_positive_int("n_neighbors", n_neighbors)
        self.backups = check_count("backups", backups)
        self.rho = float(check_greater("rho", rho, 1))

    def _rank_pool(self, vectors: np.ndarray, m: int) -> np.ndarray:
        voters = self._vote_matrix(vectors)  # (n, n) csr: voters[u, v] = 1 when v votes for u
        weight = np.ones(len(vectors))  # (n,) the current weight of each voter
        picked: list[int] = []
        for _ in range(min(len(vectors), m + self.backups)):
            votes = voters @ weight  # (n,)
            votes[picked] = -np.inf
            best = int(np.argmax(votes))
            picked.append(best)
            weight[voters.indices[voters.indptr[best]:voters.indptr[best + 1]]] /= self.rho
            weight[best] = 0.0  # a picked example no longer votes
        taken = set(picked)
        in_degree = np.asarray(voters.sum(axis=1)).ravel()  # (n,)
        return np.array(picked + [r for r in np.argsort(-in_degree, kind="stable") if r not in taken], dtype=np.int64)

    def _vote_matrix(self, vectors: np.ndarray):
        """Sparse (n, n) matrix with a 1 at [u, v] when u is among v's n_neighbors nearest (cosine, not v)."""
        from scipy.sparse import csr_matrix

        n = len(vectors)
        width = min(self.n_neighbors, n - 1)
        _, ids = self.index_.search(vectors, width + 1)  # (n, width + 1) example ids, v itself usually first
        row_of = {int(i): r for r, i in enumerate(self.pool_.ids)}
        rows: list[int] = []
        cols: list[int] = []
        for v in range(n):
            neighbours = [row_of[int(i)] for i in ids[v] if i >= 0 and row_of[int(i)] != v][:width]
            rows += neighbours
            cols += [v] * len(neighbours)
        return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
