"""Examples and where they come from: task specs (task_configs/*.yaml), dataset loading, file readers, perturbations."""
