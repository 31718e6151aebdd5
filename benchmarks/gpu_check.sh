#!/usr/bin/env bash
# One-shot check for a GPU machine without network, run from anywhere:
#
#   bash benchmarks/gpu_check.sh
#
# Needs only python3 with torch, triton, numpy and pytest: nothing is installed (the package is
# put on PYTHONPATH through a temporary link tree), no rich, no setuptools, no network. Steps:
#   1. correctness: the kernels on the GPU (compiled Triton, bf16/fp16/fp32 accuracy, no host
#      sync, strided inputs) - tests/test_linear_logprob.py too when hypothesis is installed;
#   2. benchmarks: throughput, TFLOP/s credited and executed, fraction of a matmul measured in the
#      same run, peak memory (plain-text table and JSON under benchmarks/results/);
#   3. the compiled-code table of every kernel variant (benchmarks/results/kernel-compiled/);
#   4. a few RL steps of a random-init 0.5B Qwen2-shaped model, OCC against detach (needs the
#      trainer's dependencies: transformers, tokenizers, safetensors, rich, tyro, pyyaml).
# Without a GPU the GPU-only parts skip with a message. Optional packages missing on the machine
# (liger-kernel for the Liger baseline, the trainer's dependencies) can be brought as wheels in
# ./.whl/. Results are copied to $OUT when it is set.
#
# Environment: GPU_CHECK_DRY_RUN=1 runs every step at its smallest (one benchmark case, sm_90
# bf16 only, two RL steps) to check the script itself; OCC_FAST_RESULTS_DIR redirects results.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1
results="${OCC_FAST_RESULTS_DIR:-$root/benchmarks/results}"
export OCC_FAST_RESULTS_DIR="$results"
dry="${GPU_CHECK_DRY_RUN:-0}"
status=0

site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
if compgen -G "$root/.whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site/wheels" "$root"/.whl/*.whl || status=1
fi
# occ_fast from the tree, occ_fast.kernels from kernels/src/ (the layout pyproject.toml installs).
mkdir "$site/occ_fast"
for entry in "$root"/occ_fast/*; do ln -s "$entry" "$site/occ_fast/"; done
ln -s "$root/kernels/src" "$site/occ_fast/kernels"
export PYTHONPATH="$site:$site/wheels${PYTHONPATH:+:$PYTHONPATH}"
# Run from the link tree: from the repository root, Python would import ./occ_fast (without kernels/src/).
cd "$site"

python3 -c "import torch, triton, numpy, pytest" || { echo "gpu_check needs torch, triton, numpy and pytest"; exit 1; }
gpu=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$gpu" = 1 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
else
    echo "no CUDA device: GPU-only steps will be skipped"
fi
python3 -c "import torch, triton, occ_fast.kernels; print('torch', torch.__version__, 'triton', triton.__version__, 'occ_fast.kernels from', occ_fast.kernels.__path__[0])" || exit 1

echo "== 1. correctness =="
tests=("$root/tests/test_linear_logprob_gpu.py" "$root/tests/test_kernel_hazards.py")
if python3 -c "import hypothesis" 2>/dev/null; then
    tests+=("$root/tests/test_linear_logprob.py")
else
    echo "hypothesis not installed: tests/test_linear_logprob.py skipped (pip install hypothesis, or a wheel in ./.whl)"
fi
if [ "$dry" = 1 ]; then tests=("$root/tests/test_linear_logprob_gpu.py"); fi
python3 -m pytest -q -rs -p no:cacheprovider "${tests[@]}" || status=1

echo "== 2. benchmarks =="
bench=(-k "torch_chunked and 1024") && [ "$dry" = 1 ] || bench=()
python3 -m pytest -q -s -p no:cacheprovider "$root/benchmarks/test_bench_linear_logprob.py" "${bench[@]}" || status=1

echo "== 3. compiled code =="
inspect=(--all-tiles --dtype bf16 fp16 fp32) && [ "$dry" = 1 ] && inspect=(--arch 90 --dtype bf16)
python3 -W ignore -m occ_fast.kernels.inspect "${inspect[@]}" --write "$results/kernel-compiled" || status=1

echo "== 4. RL steps =="
steps=4 && [ "$dry" = 1 ] && steps=2
python3 "$root/benchmarks/rl_steps.py" --steps "$steps" --out "$results/rl-steps" || status=1

if [ -n "${OUT:-}" ]; then
    cp -r "$results"/. "$OUT"/ 2>/dev/null || true
fi
echo "gpu_check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
