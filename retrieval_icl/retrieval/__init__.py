"""Sentence encoders, the FAISS index of a pool, near-duplicates and the kernel surrogate."""
