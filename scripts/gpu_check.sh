#!/usr/bin/env bash
# The GPU path end to end, on a CUDA machine after `bash scripts/install.sh --gpu` (a few minutes): FAISS search on
# the GPU against the CPU, float16 scoring and attention capture on CUDA against CPU float32 and eager attention, and
# the SST-2 main job timed on the GPU. Prints a table; exit 1 on any mismatch, 2 when no CUDA device is available.
# Options go to benchmarks/gpu_check.py (--help); without a GPU, `--cpu-selftest` runs the comparisons CPU vs CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_check.py "$@"
