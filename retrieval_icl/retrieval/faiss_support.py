"""Which FAISS build is installed: the distributions that provide `import faiss`, and the GPUs it can search on.

FAISS ships as two wheels that provide the same `faiss` module: faiss-cpu (the `cpu` extra, what
`scripts/install.sh` installs) and faiss-gpu (the `gpu` extra, `scripts/install.sh --gpu`). Installed side by side
they overwrite each other's files, so neither is a base dependency, and `faiss_build()` names every distribution
that provides the module so that a check can refuse two. No torch here: an index loads without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

try:
    import faiss
except ImportError as exc:  # neither extra installed: name the package to install, not only the module
    raise ImportError(
        "FAISS is not installed: run `bash scripts/install.sh` (or `--gpu` for FAISS on a GPU), "
        "or `pip install -e '.[cpu]'` / `pip install -e '.[gpu]'`."
    ) from exc

__all__ = ["FaissBuild", "faiss", "faiss_build", "faiss_distributions", "faiss_gpu_count"]


@dataclass(frozen=True)
class FaissBuild:
    """The installed FAISS: its version, the distributions that provide the module, the GPUs it sees."""

    version: str
    distributions: tuple[str, ...]  # exactly one in a sound install
    gpus: int

    @property
    def single(self) -> bool:
        """True when one distribution provides `faiss` (two overwrite each other's files)."""
        return len(self.distributions) == 1

    def describe(self) -> str:
        """One line: `faiss 1.15.1 from faiss-gpu, 1 GPU`."""
        source = " + ".join(self.distributions) or "an unknown distribution"
        return f"faiss {self.version} from {source}, {self.gpus} GPU{'' if self.gpus == 1 else 's'}"


def faiss_gpu_count() -> int:
    """GPUs FAISS can search on: 0 with a CPU build (older ones lack get_num_gpus) or without a visible GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def faiss_distributions() -> tuple[str, ...]:
    """Installed distributions that provide the `faiss` module, sorted (scans every installed package: ~1 s)."""
    return tuple(sorted(set(metadata.packages_distributions().get("faiss", []))))


def faiss_build() -> FaissBuild:
    """The installed FAISS build, for a check or a log line."""
    return FaissBuild(faiss.__version__, faiss_distributions(), faiss_gpu_count())
