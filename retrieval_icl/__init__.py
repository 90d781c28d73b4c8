"""retrieval-icl: demonstration retrieval for in-context learning, read through the kernel-regression lens."""

__version__ = "0.1.0"
