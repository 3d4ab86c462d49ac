#!/usr/bin/env bash
# Throughput on one GPU, in a few minutes: the reference loop against the worker's fast path at
# full CIFAR-10 size (bench/throughput.py), then 1, 2 and 4 trials sharing the GPU
# (bench/packing.py), the targets checked (bench/targets.py), and what each paper table costs at
# that rate (bench/gpu_hours.py). Needs PyTorch with CUDA, torchvision and the project's Python
# dependencies (numpy, scikit-learn); no Ray, no installation of the project itself.
#
#   bench/gpu.sh                        # results in $OUT if set, else in out/bench
#   DEVICE=cpu QUICK=1 bench/gpu.sh     # the same steps on a CPU at toy sizes (a smoke test)
#
# Targets (docs/benchmarks.md): >= 7x the reference loop on the same GPU, >= 50,000 training
# images/s for CIFAR ResNet-18 in bf16 on an H100, 4 trials per GPU >= 1.5x one trial.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
out="${OUT:-out/bench}"
mkdir -p "$out"

if [[ "${QUICK:-0}" == 1 ]]; then
    sizes=(--arch resnet8 --batch 32 --train-images 128 --val-images 32 --test-images 32)
    throughput_settings=(reference fp32 bf16-cl)
    # fp32: most CPUs have no native bfloat16, and this mode only checks that the steps run.
    packing=(--trials 1 2 --precision fp32)
else
    sizes=(--arch resnet18 --batch 128 --train-images 45000 --val-images 5000 --test-images 10000)
    throughput_settings=(reference fp32 bf16-cl bf16-cl-compile)
    packing=(--trials 1 2 4 --precision bf16 --memory-format channels_last)
fi

# Fail in the first seconds, with one line, rather than after the data is written.
"$python" - "$device" <<'EOF' | tee "$out/machine.txt"
import sys, platform
import torch, torchvision, sklearn
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device is visible to PyTorch " + torch.__version__)
name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
print(f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"torchvision {torchvision.__version__}, python {platform.python_version()}")
EOF
if [[ "$device" == cuda ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
        | tee -a "$out/machine.txt"
fi

echo "== throughput: reference loop vs worker (one process, interleaved epochs)"
"$python" bench/throughput.py --device "$device" "${sizes[@]}" --warmup 1 --epochs 2 \
    --settings "${throughput_settings[@]}" --json "$out/throughput.json" \
    | tee "$out/throughput.txt"

echo "== packing: trials sharing one $device"
"$python" bench/packing.py --device "$device" "${sizes[@]}" --epochs 3 "${packing[@]}" \
    --json "$out/packing.json" | tee "$out/packing.txt"

echo "== targets"
"$python" bench/targets.py --throughput "$out/throughput.json" --packing "$out/packing.json" \
    | tee "$out/targets.md"

echo "== GPU-hours per paper table at the measured rate (bench/gpu_hours.py)"
if "$python" -c "import pydantic, yaml" 2>/dev/null; then
    "$python" bench/gpu_hours.py --measured "$out/throughput.json" | tee "$out/gpu_hours.md"
else
    # A bare GPU machine may lack them; the measurement is in throughput.json either way.
    echo "skipped (no pydantic/PyYAML here): where the project is installed, run" \
        "python bench/gpu_hours.py --measured $out/throughput.json"
fi

echo "results in $out: machine.txt, throughput.{txt,json}, packing.{txt,json}, targets.md, gpu_hours.md"
