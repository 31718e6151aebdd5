#!/usr/bin/env bash
# One-shot check for a GPU machine without network, run from the repository root:
#
#   bash benchmarks/gpu_check.sh
#
# Installs the project in place (no dependency resolution), runs the GPU correctness tests
# (compiled Triton kernels, bf16/fp16 accuracy against PyTorch's own, no host sync), then the
# throughput/memory benchmarks, printing their table. Results land in benchmarks/results/ and,
# when $OUT is set, are copied there too. Optional packages missing on the machine (liger-kernel
# for the Liger baseline, tyro, math-verify) can be brought as wheels in ./.whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
status=0

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/occ-fast-site .whl/*.whl
    export PYTHONPATH="/tmp/occ-fast-site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

echo "== correctness: kernels on the GPU =="
python3 -m pytest -q -rs tests/test_linear_logprob.py tests/test_linear_logprob_gpu.py || status=1

echo "== benchmarks =="
python3 -m pytest -q -s -p no:cacheprovider benchmarks/ || status=1

if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/*.json "$OUT"/ 2>/dev/null || true
fi
exit $status
