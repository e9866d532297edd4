#!/usr/bin/env bash
# Start CUDA's MPS daemon, if it starts and a client can use it, so that many small processes share the GPU
# concurrently rather than by time slices, and say which happened (one line). Used by gpu_table.sh and
# gpu_learning.sh with MPS=1.   bash bench/gpu_mps.sh [PYTHON]
py=${1:-python3}
if nvidia-cuda-mps-control -d && timeout 60 "$py" -c 'import torch; torch.ones(1, device="cuda").sum().item()'; then
  echo "MPS on"
else
  echo quit | nvidia-cuda-mps-control 2> /dev/null
  echo "MPS could not start: the processes share the GPU by time slices"
fi
