"""RunRecord: the line `ricl compare` writes per run and query in records.jsonl, and every reader checks (no torch).

The writer builds one RunRecord per scored query and dumps it (`to_json`); the reader (results_dir.load_results)
turns each records.jsonl line back into one through `RunRecord.check`, so both sides share this one declaration of
the fields, their types and invariants, and the analyses read its attributes.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import RiclError

Span = tuple[int, int]


class AttentionDigest(BaseModel):
    """Attention from the prediction position, averaged over layers and heads (the full arrays are saved apart)."""

    model_config = ConfigDict(extra="forbid")
    preamble_mass: float  # on the preamble: the sink token (BOS) and the instruction line
    x_mass: list[float]  # per demonstration, on its input x_i
    y_mass: list[float]  # per demonstration, on its label y_i


class RunRecord(BaseModel):
    """One query of one run: what was shown (demonstrations, spans), what the model said and how it was scored.

    Fields without a default are the ones every analysis needs; the others are always written by `ricl compare`
    and may be absent from hand-made records. Field order is the order in records.jsonl.
    """

    model_config = ConfigDict(extra="forbid")
    task: str
    selector: str
    seed: int
    k: int
    label_format: str
    pool: str
    run: str
    query_id: int
    query_text: str | None = None
    gold: int
    prediction: int  # calibrated when the run was calibrated
    correct: bool
    raw_prediction: int  # argmax of label_log_probs: the model's own prediction
    raw_correct: bool | None = None
    label_log_probs: list[float]
    demo_ids: list[int]  # in prompt order; the last one sits next to the query
    demo_labels: list[int]
    demo_scores: list[float]  # the selector's similarities, named by demo_score_kind
    demo_score_kind: str | None = None
    encoder_similarities: list[float]  # cosine to the query under the experiment's encoder
    n_demos_requested: int | None = None
    n_demos_used: int | None = None
    dropped_ids: list[int] | None = None  # dropped to fit the context window
    prompt_tokens: int | None = None
    preamble_span: Span
    x_spans: list[Span] | None = None
    y_spans: list[Span] | None = None
    query_span: Span | None = None
    calibrated_log_probs: list[float] | None = None
    attention: AttentionDigest | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "RunRecord":
        n = len(self.demo_ids)
        lengths = [len(self.demo_labels), len(self.demo_scores), len(self.encoder_similarities)]
        if any(m != n for m in lengths):
            raise ValueError(f"demo_ids, demo_labels, demo_scores and encoder_similarities have lengths "
                             f"{[n, *lengths]}; expected equal lengths")
        n_labels = len(self.label_log_probs)
        labels = [self.gold, self.prediction, self.raw_prediction, *self.demo_labels]
        if any(not 0 <= v < n_labels for v in labels):
            raise ValueError(f"gold, prediction and demo_labels must be label ids in 0..{n_labels - 1}, got {labels}")
        start, end = self.preamble_span
        first = min((s[0] for s in (self.x_spans or []) + (self.y_spans or [])), default=end)
        if start != 0 or end < 1 or first < end:
            raise ValueError(f"preamble_span {list(self.preamble_span)} must be [0, n) with n >= 1 and every "
                             f"demonstration span after it (first starts at {first})")
        return self

    def to_json(self) -> str:
        """The records.jsonl line (no newline): fields in declaration order, absent optional fields left out."""
        return json.dumps(self.model_dump(exclude_none=True))

    @classmethod
    def check(cls, row: Any, where: str) -> "RunRecord":
        """`row` (a parsed records.jsonl line) checked against the schema and returned as a RunRecord; an error
        names `where` (file:line)."""
        if not isinstance(row, dict):
            raise RiclError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [name for name, f in cls.model_fields.items() if f.is_required() and name not in row]
        if missing:
            raise RiclError(f"{where}: missing keys {missing}; expected a record written by `ricl compare` (records "
                            "from before the preamble span and raw predictions were recorded: rerun `ricl compare`)")
        try:
            return cls.model_validate(row)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "record"
            raise RiclError(f"{where}: {field}: {first['msg']}") from None
