"""Where the real benchmark datasets are: `../shared/data` beside the repository (SST-2, AG News, TREC, RTE, MNLI,
laid out as NAME/SPLIT.jsonl). The one place the tests name that folder.

A test that reads it carries the `shared_data` marker; conftest.py skips those tests, naming this folder, where it
is absent. Unit tests read the tiny hand-made data in tests/data instead (`standin.TINY_DATA`).
"""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
