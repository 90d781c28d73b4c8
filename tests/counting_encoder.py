"""An Encoder whose model calls are counted, and can be held, through the public `loaded_model` seam."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from retrieval_icl.retrieval.sentence_encoder import PROBE, Encoder


class CountingModel:
    """Forwards to a real SentenceTransformer, recording each encode call's number of texts. While `gate` is
    cleared, a call waits at it (at most 30 s), so a test can hold the one thread that encodes."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls = model, []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def encode(self, texts: list[str], **kwargs: Any) -> Any:
        if list(texts) == [PROBE]:  # the encoder's fingerprint of the weights, once: not a request's encode
            return self.model.encode(texts, **kwargs)
        self.calls.append(len(texts))
        self.entered.set()
        self.gate.wait(timeout=30)
        return self.model.encode(texts, **kwargs)

    def hold(self) -> None:
        """Make the next encode calls wait at the gate; `entered` is set once one of them arrives there."""
        self.entered.clear()
        self.gate.clear()

    def get_embedding_dimension(self) -> int:
        return self.model.get_embedding_dimension()


def counting_encoder(cache_dir: Path) -> tuple[Encoder, CountingModel]:
    """A packaged-model Encoder (cache in `cache_dir`) whose model is a CountingModel, and that model."""
    model = CountingModel(Encoder(cache_dir=cache_dir).load().loaded_model)
    return Encoder(cache_dir=cache_dir, loaded_model=model), model
