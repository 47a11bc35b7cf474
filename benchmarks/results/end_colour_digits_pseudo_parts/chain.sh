#!/bin/bash
# usage: chain.sh NAME "rho seed" "rho seed" ...  (one benchmark invocation per (rho, seed), in order)
cd /work/main
D=benchmarks/results/end_colour_digits_pseudo_parts
name=$1; shift
for pair in "$@"; do
  set -- $pair
  python benchmarks/end_colour_digits.py --epochs 3 --threads 1 --fixed 10,1 --methods vanilla end_nf_train end_pseudo \
    --rhos $1 --seeds $2 --save-partial --output $D/${name}_rho$1_seed$2.json
done
