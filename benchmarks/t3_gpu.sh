#!/usr/bin/env bash
# The paper's Table 3 (memory/time strategies) measured for real on one GPU, ViT-B and ViT-L at
# 1024x1024, one image per step, bf16 autocast: peak training memory, training s/iter and
# inference s/img of the full Mask R-CNN for window / hybrid / global+checkpointing / global, and
# the backbone's FLOP utilisation (achieved FLOP/s over the device's data-sheet bf16 peak).
# Writes results/bench/t3_<size>_<gpu>.json; a layout that does not fit is recorded as "oom".
#   bash benchmarks/t3_gpu.sh            # both sizes (~10-15 min on an H100)
#   bash benchmarks/t3_gpu.sh large      # one size
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
gpu=$($py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name().replace('NVIDIA ', '').replace(' ', '_'))")
layouts="window hybrid global_checkpoint global"
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(base large)
for size in "${sizes[@]}"; do
  $py -m vitdet_lib.cli bench --size "$size" --parts probe backbone detector \
      --layouts $layouts --image-sizes 512 1024 --train-sizes 1024 --iters 10 --train-iters 10 \
      --detector-layouts $layouts --json "results/bench/t3_${size}_${gpu}.json"
done
