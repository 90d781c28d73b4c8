"""Selection strategies behind one interface (`base.py`), registered by name as each strategy module is imported.

Importing the package imports every strategy, so `base.make_selector` knows them all; each name is imported from the
module that defines it (`from retrieval_icl.selectors.knn import KNNSelector`).
"""

from __future__ import annotations

from . import adaptive, balanced, band, bm25, dpp, knn, mdl, mmr, random, representative  # noqa: F401  (registration)
