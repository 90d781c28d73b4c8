"""The application API over a saved index: DemoSelector, token budgets, the HTTP service."""
