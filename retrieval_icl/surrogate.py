"""KernelSurrogate: the LM's label distribution for a query and its demonstrations, predicted without the LM.

Han et al. (2023) read ICL as kernel regression over the demonstrations, p(y | x) = sum_i K(x, x_i) [y_i = y] /
sum_i K(x, x_i). The surrogate computes that with the encoder kernel K(x, x_i) = exp((cos(x, x_i) - 1) / h): a
demonstration identical to the query weighs 1, a distant one close to 0. Two optional terms make it a model of a
real LM rather than of the idealised kernel:

- `prior`: pseudo-demonstrations of weight `prior`, spread evenly over the labels. With them a few distant
  demonstrations give an uncertain estimate, and only near, agreeing ones a confident one.
- `log_bias`: the LM's own preference per label, added to the log-probabilities (fitted by `calibrate`).

>>> s = KernelSurrogate(n_labels=2, bandwidth=0.1)
>>> s.predict([0.9, 0.8], [1, 0]).round(3).tolist()
[0.269, 0.731]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import RiclError


class KernelSurrogate:
    """Kernel regression over demonstrations' labels, weighted by their cosine to the query (see the module)."""

    def __init__(self, n_labels: int, bandwidth: float = 0.1, prior: float = 0.0,
                 log_bias: Sequence[float] | None = None) -> None:
        if not isinstance(n_labels, int) or isinstance(n_labels, bool) or n_labels < 2:
            raise RiclError(f"n_labels must be an integer >= 2, got {n_labels!r}")
        if not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
            raise RiclError(f"bandwidth must be a number > 0, got {bandwidth!r}")
        if not isinstance(prior, (int, float)) or prior < 0:
            raise RiclError(f"prior must be a number >= 0, got {prior!r}")
        bias = np.zeros(n_labels) if log_bias is None else np.asarray(log_bias, dtype=np.float64)
        if bias.shape != (n_labels,):
            raise RiclError(f"log_bias needs one value per label ({n_labels}), got shape {bias.shape}")
        self.n_labels, self.bandwidth, self.prior, self.log_bias = n_labels, float(bandwidth), float(prior), bias

    def weights(self, similarities: Sequence[float]) -> np.ndarray:
        """K(x, x_i) = exp((cos_i - 1) / h) for each demonstration: (n,) in (0, 1] for cosines <= 1."""
        return np.exp((np.asarray(similarities, dtype=np.float64) - 1.0) / self.bandwidth)

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
        mass = self.label_mass(similarities, labels)
        with np.errstate(divide="ignore"):
            logits = np.log(mass) if mass.sum() > 0 else np.zeros(self.n_labels)
        logits = logits + self.log_bias
        logits -= logits.max()
        p = np.exp(logits)
        return p / p.sum()

    def predict_many(self, similarities: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> np.ndarray:
        """`predict` for each query: (n_queries, n_labels)."""
        return np.array([self.predict(s, y) for s, y in zip(similarities, labels)]).reshape(-1, self.n_labels)

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
