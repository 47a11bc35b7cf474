#!/usr/bin/env bash
# The Colour-Digits protocol (end_colour_digits.py) with one process per (rho, method), all on one GPU, then
# merged into one result. The small models leave a GPU mostly idle, so 12 processes take about as long as one
# (measured on an H100: 12 processes x 20 epochs, 60 training runs, in 9 minutes).
#
#   bash benchmarks/end_colour_digits_parallel.sh OUT_DIR [extra end_colour_digits.py flags]
#
# Defaults: 20 epochs, seeds 0 1 2, grid "0.1,1;1,1;10,1"; OUT_DIR/parts holds every process's JSON and log,
# OUT_DIR.json / OUT_DIR.md the merged result.
set -euo pipefail
out=${1:?usage: end_colour_digits_parallel.sh OUT_DIR [flags]}
shift
mkdir -p "$out/parts"
pids=()
for rho in 0.99 0.995 0.997 0.999; do
  for method in vanilla end_nf_false end_nf_true; do
    python benchmarks/end_colour_digits.py --device cuda --epochs 20 --seeds 0 1 2 --threads 1 \
      --grid "0.1,1;1,1;10,1" --rhos "$rho" --methods "$method" "$@" \
      --output "$out/parts/cd_${rho}_${method}.json" > "$out/parts/cd_${rho}_${method}.log" 2>&1 &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done
python benchmarks/end_colour_digits.py --merge "$out"/parts/cd_*.json --output "$out.json"
