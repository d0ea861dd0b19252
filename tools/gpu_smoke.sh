#!/usr/bin/env bash
# The first hour on a GPU node: about 8 minutes on one GPU (docs/engine.md, "First GPU hour").
# Each check prints PASS, FAIL or SKIP with what it saw; exits 1 when any failed.
#   tools/gpu_smoke.sh            # on the GPU (CUDA_VISIBLE_DEVICES picks which)
#   tools/gpu_smoke.sh --cpu      # the CPU path the test suite runs (tests/test_gpu_smoke.py)
#   tools/gpu_smoke.sh --out DIR  # keep the runs and exports in DIR
set -euo pipefail
exec "${PYTHON:-python}" -m vitc.bench.gpu_smoke "$@"
