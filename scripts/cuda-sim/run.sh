#!/usr/bin/env bash
# Runs the pyramid CUDA kernels on the CPU in a simulation of the CUDA execution model
# (stub/sim.h) and checks them against the CPU reference: a way to catch indexing,
# pipelining and rounding mistakes on machines without a GPU. What it cannot check: the
# hardware's own mma/ldmatrix fragment layouts (emulated from the PTX ISA as the kernels
# assume them), timing, and races that real asynchronous copies could expose.
# Usage: bash scripts/cuda-sim/run.sh [TRIALS] [MODE]   (modes: see pyramid_main.cc)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
here="$root/scripts/cuda-sim"
out="${TMPDIR:-/tmp}/kvsquash-cuda-sim"
mkdir -p "$out"
python3 "$here/patch.py" "$root/cuda/pyramid.cu" "$out/pyramid_sim.cc"
g++ -std=c++20 -O1 -ffp-contract=off -pthread -I"$here/stub" -I"$out" -I"$root/csrc/include" -I"$root/csrc" -I"$root/cuda" \
  "$here/pyramid_main.cc" "$root/csrc/cpu/pyramid.cc" "$root/csrc/core/parallel.cc" -o "$out/pyramid-sim"
stdbuf -oL "$out/pyramid-sim" "${1:-12}" "${2:-0}"
