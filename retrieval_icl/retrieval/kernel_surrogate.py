"""KernelSurrogate: the LM's label distribution for a query and its demonstrations, predicted without the LM.

Han et al. (2023) read ICL as kernel regression over the demonstrations, p(y | x) = sum_i K(x, x_i) [y_i = y] /
sum_i K(x, x_i). The surrogate computes that with the encoder kernel K(x, x_i) = exp((cos(x, x_i) - 1) / h): a
demonstration identical to the query weighs 1, a distant one close to 0. Bandwidth h = 0 is the nearest neighbour:
the demonstrations with the highest cosine share a weight of 1 equally, the others weigh 0. This is the one kernel
vote of the package: the analysis's kernel regression and the adaptive selector's prefix estimates call it. Two
optional terms make it a model of a real LM rather than of the idealised kernel:

- `prior`: pseudo-demonstrations of weight `prior`, spread evenly over the labels. With them a few distant
  demonstrations give an uncertain estimate, and only near, agreeing ones a confident one.
- `log_bias`: the LM's own preference per label, added to the log-probabilities.

`KernelSurrogate.fit` finds the bandwidth and log_bias (and, with `prior="fit"`, the prior) under which the surrogate
best explains an LM's own label distributions (maximum likelihood over bandwidths > 0; scipy is imported only
there). Predictions are computed in log space, so a narrow bandwidth does not underflow to a uniform estimate.

>>> s = KernelSurrogate(n_labels=2, bandwidth=0.1)
>>> s.predict([0.9, 0.8], [1, 0]).round(3).tolist()
[0.269, 0.731]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import RiclError
from ..lm.scoring import log_normalise

BANDWIDTH_STARTS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)  # the fit starts from the best of these
LOG_BANDWIDTH_BOUNDS = (float(np.log(1e-4)), float(np.log(1e2)))
BIAS_BOUND = 30.0  # |log_bias| at most this: beyond it one label has all the probability anyway
PRIOR_STARTS = (0.01, 0.1, 1.0)  # with prior="fit", the search also starts from the best of these
LOG_PRIOR_BOUNDS = (float(np.log(1e-6)), float(np.log(1e3)))


class KernelSurrogate:
    """Kernel regression over demonstrations' labels, weighted by their cosine to the query (see the module)."""

    def __init__(self, n_labels: int, bandwidth: float = 0.1, prior: float = 0.0,
                 log_bias: Sequence[float] | None = None) -> None:
        if not isinstance(n_labels, int) or isinstance(n_labels, bool) or n_labels < 2:
            raise RiclError(f"n_labels must be an integer >= 2, got {n_labels!r}")
        if not isinstance(bandwidth, (int, float)) or isinstance(bandwidth, bool) or not bandwidth >= 0:
            raise RiclError(f"bandwidth must be a number >= 0 (0 = nearest neighbour), got {bandwidth!r}")
        if not isinstance(prior, (int, float)) or prior < 0:
            raise RiclError(f"prior must be a number >= 0, got {prior!r}")
        bias = np.zeros(n_labels) if log_bias is None else np.asarray(log_bias, dtype=np.float64)
        if bias.shape != (n_labels,):
            raise RiclError(f"log_bias needs one value per label ({n_labels}), got shape {bias.shape}")
        self.n_labels, self.bandwidth, self.prior, self.log_bias = n_labels, float(bandwidth), float(prior), bias

    def weights(self, similarities: Sequence[float]) -> np.ndarray:
        """K(x, x_i) = exp((cos_i - 1) / h) for each demonstration: (n,) in (0, 1] for cosines <= 1; with h = 0,
        1 / (number of nearest) for the nearest ones and 0 for the others."""
        sims = np.asarray(similarities, dtype=np.float64)[None]  # (1, n)
        relative, offset = _log_kernel(sims, np.ones(sims.shape, dtype=bool), self.bandwidth)
        return np.exp(relative + offset)[0]

    def label_mass(self, similarities: Sequence[float], labels: Sequence[int]) -> np.ndarray:
        """Kernel weight per label, prior included: (n_labels,)."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(similarities):
            raise RiclError(f"got {len(similarities)} similarities for {len(labels)} labels; expected one each")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_labels):
            raise RiclError(f"demonstration labels must be in 0..{self.n_labels - 1}, got {labels.tolist()}")
        mass = np.bincount(labels, weights=self.weights(similarities), minlength=self.n_labels)
        return mass + self.prior / self.n_labels

    def predict(self, similarities: Sequence[float], labels: Sequence[int]) -> np.ndarray:
        """p(y) for one query from its demonstrations' cosines and labels: (n_labels,), summing to 1.

        With no demonstrations and no prior, the estimate is uniform (then tilted by log_bias)."""
        return self.predict_many([similarities], [labels])[0]

    def predict_many(self, similarities: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> np.ndarray:
        """`predict` for each query: (n_queries, n_labels)."""
        return np.exp(self.log_predict_many(similarities, labels))

    def log_predict_many(self, similarities: Sequence[Sequence[float]],
                         labels: Sequence[Sequence[int]]) -> np.ndarray:
        """log p(y) for each query, -inf for a label with no mass: (n_queries, n_labels)."""
        sims, member = _padded(similarities, labels, self.n_labels)
        return log_normalise(_log_mass(sims, member, self.bandwidth, self.prior) + self.log_bias)

    def predict_prefixes(self, similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """p(y) over each query's first m demonstrations, for every m: similarities and labels (n, depth), nearest
        first; returns (n, depth, n_labels), the same as `predict_many` over each prefix."""
        sims, labels = np.asarray(similarities, dtype=np.float64), np.asarray(labels, dtype=np.int64)
        if sims.shape != labels.shape or sims.ndim != 2:
            raise RiclError(f"similarities and labels must both be (queries, depth), got {sims.shape} and "
                            f"{labels.shape}")
        member = np.eye(self.n_labels, dtype=bool)[labels]  # (n, depth, L)
        if self.bandwidth > 0:  # relative to the query's nearest cosine: exact for prefixes holding it (nearest first)
            relative, offset = _log_kernel(sims, np.ones(sims.shape, dtype=bool), self.bandwidth)  # (n, depth), (n, 1)
            log_mass = np.logaddexp.accumulate(np.where(member, relative[:, :, None], -np.inf), axis=1)  # (n, depth, L)
            offset = offset[:, :, None]
        else:
            log_mass, offset = _nearest_prefix_log_mass(sims, member), 0.0
        if self.prior > 0:
            log_mass = np.logaddexp(log_mass, np.log(self.prior / self.n_labels) - offset)
        log_mass[np.isneginf(log_mass).all(axis=-1)] = 0.0
        return np.exp(log_normalise(log_mass + self.log_bias))

    @classmethod
    def fit(cls, similarities: Sequence[Sequence[float]], labels: Sequence[Sequence[int]],
            target_probs: Sequence[Sequence[float]], n_labels: int,
            prior: float | str = 0.0) -> "KernelSurrogate":
        """The surrogate whose bandwidth and log_bias maximise the likelihood of target_probs (n_queries, n_labels).

        target_probs is typically the LM's own label distribution. prior is held fixed, or fitted too with
        prior="fit". A label no demonstration of a query has (prior 0) gets probability 0 whatever the parameters:
        that constant term is left out. Fitted: loss_ (mean cross-entropy, those terms excluded), n_fit_ (queries)."""
        from scipy.optimize import minimize

        fit_prior = prior == "fit"
        cls(n_labels, prior=1.0 if fit_prior else prior)  # checks n_labels and prior before any work
        sims, member = _padded(similarities, labels, n_labels)
        target = _targets(target_probs, len(sims), n_labels)

        def unpack(theta: np.ndarray) -> tuple[float, float, np.ndarray]:
            """theta: log bandwidth, [log prior], log_bias of labels 1.. (label 0 pinned: bias is up to a constant)."""
            rest = theta[1 + fit_prior:]
            return float(np.exp(theta[0])), float(np.exp(theta[1])) if fit_prior else prior, np.r_[0.0, rest]

        def loss(theta: np.ndarray) -> float:
            bandwidth, p, bias = unpack(theta)
            return _cross_entropy(log_normalise(_log_mass(sims, member, bandwidth, p) + bias), target)

        # the likelihood need not be concave in the bandwidth (or the prior): start from the best of a coarse grid
        priors = [[np.log(p)] for p in PRIOR_STARTS] if fit_prior else [[]]
        start = min((np.r_[np.log(h), p0, np.zeros(n_labels - 1)] for h in BANDWIDTH_STARTS for p0 in priors), key=loss)
        bounds = [LOG_BANDWIDTH_BOUNDS, *[LOG_PRIOR_BOUNDS] * fit_prior, *[(-BIAS_BOUND, BIAS_BOUND)] * (n_labels - 1)]
        found = minimize(loss, start, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-12, "gtol": 1e-9})
        bandwidth, fitted_prior, bias = unpack(found.x)
        fitted = cls(n_labels, bandwidth, fitted_prior, bias - bias.mean())
        fitted.loss_, fitted.n_fit_ = float(found.fun), len(sims)
        return fitted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters; `from_dict` reads them back."""
        return {"n_labels": self.n_labels, "bandwidth": self.bandwidth, "prior": self.prior,
                "log_bias": [float(v) for v in self.log_bias]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KernelSurrogate":
        return cls(int(data["n_labels"]), data["bandwidth"], data.get("prior", 0.0), data.get("log_bias"))

    def __repr__(self) -> str:
        return (f"KernelSurrogate(n_labels={self.n_labels}, bandwidth={self.bandwidth:g}, prior={self.prior:g}, "
                f"log_bias={np.round(self.log_bias, 3).tolist()})")


def _padded(similarities: Sequence[Sequence[float]], labels: Sequence[Sequence[int]],
            n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosines padded with zeros, (n_queries, max_demos), and label membership, (n_queries, n_labels, max_demos)."""
    if len(similarities) != len(labels):
        raise RiclError(f"got similarities for {len(similarities)} queries and labels for {len(labels)}; "
                        "expected one list each")
    width = max((len(s) for s in similarities), default=0)
    sims = np.zeros((len(labels), width))
    member = np.zeros((len(labels), n_labels, width), dtype=bool)
    for q, (s, y) in enumerate(zip(similarities, labels)):
        y = np.asarray(y, dtype=np.int64)
        if len(y) != len(s):
            raise RiclError(f"got {len(s)} similarities for {len(y)} labels; expected one each")
        if y.size and (y.min() < 0 or y.max() >= n_labels):
            raise RiclError(f"demonstration labels must be in 0..{n_labels - 1}, got {y.tolist()}")
        sims[q, :len(y)] = s
        member[q, y, np.arange(len(y))] = True
    return sims, member


def _log_kernel(sims: np.ndarray, present: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """log K of the present demonstrations of sims (Q, max_demos) as relative (Q, max_demos) + offset (Q, 1).

    relative = (cos - nearest cos) / h is computed before the large offset (nearest cos - 1) / h is added: a narrow
    bandwidth keeps full precision, and normalising over labels cancels the offset. h = 0: relative 0 for the
    nearest (exact equality, so duplicates tie) and -inf for the rest, offset -log(number of nearest)."""
    top = np.where(present, sims, -np.inf).max(axis=-1, keepdims=True, initial=-np.inf)  # (Q, 1)
    top = np.where(np.isneginf(top), 1.0, top)  # nothing present: offset 0
    if bandwidth > 0:
        return (sims - top) / bandwidth, (top - 1.0) / bandwidth
    nearest = present & (sims == top)
    return np.where(nearest, 0.0, -np.inf), -np.log(np.maximum(nearest.sum(axis=-1, keepdims=True), 1))


def _nearest_prefix_log_mass(sims: np.ndarray, member: np.ndarray) -> np.ndarray:
    """log label mass of the h = 0 kernel over each prefix: sims (n, depth), member (n, depth, L) -> (n, depth, L)."""
    depth = sims.shape[1]
    top = np.maximum.accumulate(sims, axis=1)  # (n, depth): the nearest cosine of each prefix
    in_prefix = np.tril(np.ones((depth, depth), dtype=bool))  # (prefix m, demo j): j <= m
    nearest = in_prefix & (sims[:, None, :] == top[:, :, None])  # (n, m, j)
    counts = nearest.astype(np.float64) @ member.astype(np.float64)  # (n, m, L): nearest demos per label
    with np.errstate(divide="ignore"):  # a label with no nearest demonstration has log mass -inf
        return np.log(counts) - np.log(np.maximum(nearest.sum(axis=-1, keepdims=True), 1))


def _log_mass(sims: np.ndarray, member: np.ndarray, bandwidth: float, prior: float) -> np.ndarray:
    """log `label_mass` per query up to a per-query constant (the kernel's offset, which normalising cancels), summed
    in log space; 0 (uniform) for a query with no mass at all: (Q, n_labels)."""
    n_labels = member.shape[1]
    relative, offset = _log_kernel(sims, member.any(axis=1), bandwidth)  # (Q, max_demos), (Q, 1); padding: no label
    z = np.where(member, relative[:, None, :], -np.inf)  # (Q, n_labels, max_demos)
    log_mass = np.logaddexp.reduce(z, axis=-1) if z.shape[-1] else np.full(z.shape[:2], -np.inf)
    if prior > 0:
        log_mass = np.logaddexp(log_mass, np.log(prior / n_labels) - offset)  # the prior in the offset's units
    log_mass[np.isneginf(log_mass).all(axis=-1)] = 0.0  # no demonstration and no prior: uniform, as `predict` says
    return log_mass


def _targets(target_probs: Sequence[Sequence[float]], n_queries: int, n_labels: int) -> np.ndarray:
    """target_probs checked and normalised per row: (n_queries, n_labels)."""
    p = np.asarray(target_probs, dtype=np.float64)
    if n_queries == 0 or p.shape != (n_queries, n_labels):
        raise RiclError(f"target_probs must have shape (n_queries, n_labels) = ({n_queries}, {n_labels}) with at "
                        f"least one query, got {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not (p.sum(axis=1) > 0).all():
        raise RiclError("target_probs must be finite, >= 0 and sum to more than 0 in every row")
    return p / p.sum(axis=1, keepdims=True)


def _cross_entropy(log_q: np.ndarray, target: np.ndarray) -> float:
    """Mean over queries of -sum_y target(y) log q(y), leaving out labels q gives no mass (log_q = -inf)."""
    finite = np.isfinite(log_q)
    return float(-np.where(finite, target * np.where(finite, log_q, 0.0), 0.0).sum() / len(target))
