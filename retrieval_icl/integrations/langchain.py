"""LangChain adapter: a BaseExampleSelector backed by a saved retrieval-icl index.

>>> from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate  # doctest: +SKIP
>>> selector = RiclExampleSelector.from_index("indexes/sst2-train", k=4, strategy="mmr")  # doctest: +SKIP
>>> prompt = FewShotPromptTemplate(example_selector=selector,
...     example_prompt=PromptTemplate.from_template("Review: {sentence}\\nSentiment: {label}"),
...     suffix="Review: {sentence}\\nSentiment:", input_variables=["sentence"])  # doctest: +SKIP
>>> print(prompt.format(sentence="a moving, funny film"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from langchain_core.example_selectors import BaseExampleSelector

from ..errors import RiclError
from ..serving.demo_selector import DemoSelector


class RiclExampleSelector(BaseExampleSelector):
    """Selects k demonstrations per prompt input from a DemoSelector; adds examples to it (and saves).

    Example dicts use the index's text field names (renamed by `variables`: field -> prompt variable) plus
    `label_key` holding the label name (the id as a string when the index has no names), in prompt order.
    With `max_tokens`, only those of the k that fit max_tokens tokens, most similar first (DemoSelector.select). The
    count is of retrieval-icl's own rendering of the index's task template with the selector's tokenizer, not of
    the LangChain `example_prompt`, prefix or suffix: leave headroom when your template is wordier.
    The async variants (`aselect_examples`, `aadd_example`) are LangChain's: the same calls in an executor.
    """

    def __init__(self, selector: DemoSelector, k: int = 4, strategy: str | None = None, label_key: str = "label",
                 variables: Mapping[str, str] | None = None, save_on_add: bool = True,
                 max_tokens: int | None = None) -> None:
        self.selector, self.k, self.strategy, self.label_key = selector, k, strategy, label_key
        self.variables, self.save_on_add, self.max_tokens = dict(variables or {}), save_on_add, max_tokens

    @classmethod
    def from_index(cls, directory: str | Path, k: int = 4, strategy: str = "knn", label_key: str = "label",
                   variables: Mapping[str, str] | None = None, save_on_add: bool = True, tokenizer: Any = None,
                   max_tokens: int | None = None, encoder: Any = None, **params: Any) -> "RiclExampleSelector":
        """Open a saved index; `params` configure the strategy (e.g. lambda_mult for mmr); `tokenizer` (a model name
        or a tokenizer object, default retrieval_icl.lm.models.DEFAULT_MODEL) counts `max_tokens`; `encoder` (an
        Encoder) for an index whose manifest names a local encoder folder."""
        selector = DemoSelector.load(directory, strategy=strategy, tokenizer=tokenizer, encoder=encoder, **params)
        return cls(selector, k=k, label_key=label_key, variables=variables, save_on_add=save_on_add,
                   max_tokens=max_tokens)

    def _variable(self, field: str) -> str:
        return self.variables.get(field, field)

    def _fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The text fields of a prompt input or example dict, by field name."""
        missing = [self._variable(f) for f in self.selector.text_fields if self._variable(f) not in values]
        if missing:
            raise RiclError(f"missing input variables {missing}; got {sorted(values)}")
        return {f: values[self._variable(f)] for f in self.selector.text_fields}

    def select_examples(self, input_variables: dict[str, str]) -> list[dict[str, Any]]:
        """The k demonstrations for these prompt inputs, as example dicts in prompt order."""
        chosen = self.selector.select(self._fields(input_variables), self.k, self.strategy, max_tokens=self.max_tokens)
        return [{**{self._variable(f): t for f, t in c.fields.items()},
                 self.label_key: c.label_name if c.label_name is not None else str(c.label)} for c in chosen]

    def add_example(self, example: dict[str, str]) -> int:
        """Add one example dict (text variables and `label_key`); saved when `save_on_add`; returns its id."""
        if self.label_key not in example:
            raise RiclError(f"the example has no {self.label_key!r} key; got {sorted(example)}")
        label = example[self.label_key]
        if isinstance(label, str) and label.isdigit() and label not in (self.selector.label_names or []):
            label = int(label)  # the id as a string, as select_examples writes it for unnamed labels
        row = {"fields": self._fields(example), "label": label}
        return self.selector.add_examples([row], save=self.save_on_add)[0]
