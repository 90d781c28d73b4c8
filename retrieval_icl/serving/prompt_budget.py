"""Token budgets for an index's applications: its examples rendered with its task's template, counted with a
tokenizer loaded on first use, and the demonstrations that fit N tokens kept by `PromptBuilder.build`'s greedy rule."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..data.examples import Example
from ..data.tasks import TaskSpec, known_tasks, load_task, task_from_columns
from ..lm.models import DEFAULT_MODEL, load_tokenizer_and_config
from ..lm.prompts import Prompt, PromptBuilder
from ..retrieval.index import DemoIndex


class PromptBudget:
    """The prompts of one index as a causal LM reads them: the template of the index's task (its manifest's task when
    that is a built-in task or a task YAML, else one made from its text fields and label names), the label format,
    and a tokenizer given as an object or as a model name for `retrieval_icl.lm.models` (loaded offline on first
    use)."""

    def __init__(self, task: str | None, text_fields: Sequence[str], label_names: Sequence[str] | None,
                 tokenizer: Any = DEFAULT_MODEL, label_format: str = "default") -> None:
        self.task, self.text_fields, self.label_names = task, tuple(text_fields), label_names
        self.tokenizer, self.label_format = tokenizer, label_format
        self._loaded = None if isinstance(tokenizer, str) else tokenizer

    def loaded_tokenizer(self) -> Any:
        """The tokenizer object; a named one is loaded on the first call."""
        if self._loaded is None:
            self._loaded = load_tokenizer_and_config(self.tokenizer).tokenizer
        return self._loaded

    def trim(self, demos: Sequence[Example], query_texts: Sequence[str], scores: Sequence[float],
            max_tokens: int) -> Prompt:
        """The prompt of the demonstrations (in prompt order) that fit `max_tokens`, most relevant (score) first."""
        return self._builder(demos).build(demos, query_texts, scores, budget=max_tokens)

    def count(self, demos: Sequence[Example], query_texts: Sequence[str]) -> int:
        """Tokens of the prompt with these demonstrations in this order and the query (the sink token included)."""
        return len(self._builder(demos).build(demos, query_texts).token_ids)

    def _builder(self, demos: Sequence[Example]) -> PromptBuilder:
        n_labels = max((d.label + 1 for d in demos), default=0)
        task = index_task(self.task, self.text_fields, self.label_names, n_labels)
        return PromptBuilder(task, self.label_format, self.loaded_tokenizer())


def index_text_fields(index: DemoIndex) -> list[str]:
    """The names of an index's text fields: recorded at build, else its built-in task's, else generic names."""
    manifest = index.manifest
    n_texts = len(next(iter(index.examples)).texts)
    if manifest.text_fields and len(manifest.text_fields) == n_texts:
        return list(manifest.text_fields)
    if manifest.task in known_tasks():
        fields = load_task(manifest.task).text_fields
        if len(fields) == n_texts:
            return fields
    return ["text"] if n_texts == 1 else [f"text{i + 1}" for i in range(n_texts)]


def index_task(task: str | None, text_fields: Sequence[str], label_names: Sequence[str] | None,
               n_labels: int) -> TaskSpec:
    """The task that renders an index's examples (label ids below `n_labels`): `task` when it is a built-in task or
    an existing YAML file with as many text fields and enough labels, else one made from the columns, whose label
    words are `label_names` or, without names, the ids as strings. The one rule for which task renders an index: the
    application API (PromptBudget) and `ricl compare`'s LM fit (plan.index_label_probs) both call it."""
    names = tuple(label_names) if label_names else tuple(str(i) for i in range(max(2, n_labels)))
    return _index_task(task, tuple(text_fields), names, n_labels)


@lru_cache(maxsize=64)  # one YAML read and validation per index and label count, not per request
def _index_task(task: str | None, text_fields: tuple[str, ...], names: tuple[str, ...], n_labels: int) -> TaskSpec:
    if task is not None and (task in known_tasks() or (Path(task).suffix in (".yaml", ".yml")
                                                       and Path(task).is_file())):
        spec = load_task(task)
        if len(spec.text_fields) == len(text_fields) and n_labels <= len(spec.label_names):
            return spec
    return task_from_columns(text_fields, "label", names)
