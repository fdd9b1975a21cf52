#!/usr/bin/env bash
# On the GPU machine, after `source .gpu/env.sh` (see scripts/gpu-pack.sh): builds the CUDA
# addon with CMake directly (no cmake-js there), runs every test suite with
# KVSQUASH_REQUIRE_GPU=1, then the benchmarks; results land in bench/results/ and under $OUT.
set -uo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
[ -e node_modules ] || ln -s .gpu/node_modules node_modules
archs="${KVSQUASH_CUDA_ARCHS:-90}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKVSQUASH_CUDA=on -DKVSQUASH_CUDA_ARCHS="$archs" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" \
  -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include;$PWD/node_modules/node-addon-api" >/dev/null &&
  cmake --build build -j 16 2>&1 | tail -3 || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
KVSQUASH_REQUIRE_GPU=1 node scripts/test.mjs ${1:-} 2>&1 | tail -60
status=${PIPESTATUS[0]}
if [ -z "${1:-}" ]; then
  # PyTorch SDPA on the decode shapes first, so the qattn bench finds it (where torch is installed)
  python3 bench/qattn_sdpa.py 2>&1 || true
  # PyTorch SDPA at the pyramid benchmark's GPU shapes, where the machine has torch
  sdpa=bench/results/latest-sdpa.json
  if python3 -c 'import torch' 2>/dev/null && python3 bench/pyramid_sdpa.py "$sdpa"; then export KVSQUASH_SDPA_JSON="$sdpa"; fi
  node --import tsx bench/run.ts 2>&1
fi
[ -n "${OUT:-}" ] && mkdir -p "$OUT/results" && cp bench/results/*.json "$OUT/results/" 2>/dev/null
exit "$status"
