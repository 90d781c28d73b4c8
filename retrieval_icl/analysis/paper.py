"""Han et al. (2023) reference numbers, each tagged with where it comes from; the one place the code cites them.

Two protocols; do not mix them. Table 2 reports, per task, the model's ICL accuracy, the agreement of the
reconstructed prediction with ICL, the reconstructed accuracy and kernel regression on all-MiniLM-L6-v2
embeddings. The text of Section 5 reports one best head on SST-2, chosen and scored differently.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "Han et al. (2023), Understanding Emergent In-Context Learning from a Kernel Regression Perspective"
PAPER_MODEL = "GPT-J-6B (28 layers x 16 heads)"


@dataclass(frozen=True)
class Table2Row:
    """One task of the paper's Table 2 (GPT-J-6B)."""

    icl_accuracy: float
    reconstruction_agreement: float
    reconstructed_accuracy: float
    encoder_kernel_accuracy: float  # kernel regression on all-MiniLM-L6-v2 embeddings
    source: str = "Table 2"


TABLE2: dict[str, Table2Row] = {
    "sst2": Table2Row(0.805, 0.797, 0.750, 0.503),
    "mnli": Table2Row(0.383, 0.597, 0.360, 0.321),
    "rotten_tomatoes": Table2Row(0.671, 0.683, 0.527, 0.478),
    "tweet_hate": Table2Row(0.539, 0.713, 0.587, 0.548),
    "tweet_irony": Table2Row(0.519, 0.722, 0.522, 0.491),
    "tweet_offensive": Table2Row(0.542, 0.753, 0.513, 0.588),
}
TABLE2_METRICS = ("icl_accuracy", "reconstruction_agreement", "reconstructed_accuracy", "encoder_kernel_accuracy")


@dataclass(frozen=True)
class BestHead:
    """The best single head of Section 5's text: another protocol than Table 2, not comparable with its columns."""

    task: str
    agreement: float
    accuracy: float
    layers: tuple[int, int]
    source: str = "Section 5 text (best single head; not the Table 2 protocol)"


SECTION5_BEST_HEAD = BestHead("sst2", agreement=0.892, accuracy=0.864, layers=(16, 21))


def table2_reference(task: str) -> dict[str, float]:
    """The paper's Table 2 numbers for a task by metric name ({} for tasks the paper did not run)."""
    row = TABLE2.get(task)
    return {} if row is None else {m: getattr(row, m) for m in TABLE2_METRICS}


def best_head_sentence() -> str:
    """One sentence that cites Section 5's best head with its source."""
    h = SECTION5_BEST_HEAD
    return (f"Paper ({h.source}), {PAPER_MODEL} on SST-2: {h.agreement:.1%} agreement, {h.accuracy:.1%} accuracy, "
            f"heads in layers {h.layers[0]}-{h.layers[1]}.")
