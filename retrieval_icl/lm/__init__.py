"""The causal LM: models by name, prompts and their token spans, label scoring, attention capture."""
