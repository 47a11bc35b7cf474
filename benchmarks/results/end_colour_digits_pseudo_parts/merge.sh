#!/bin/bash
# Merge the complete (rho, seed) part files into benchmarks/results/end_colour_digits_pseudo.{json,md,log}.
cd /work/main
D=benchmarks/results/end_colour_digits_pseudo_parts
files=$(python - <<'PY'
import json, glob
out = []
for path in sorted(glob.glob("benchmarks/results/end_colour_digits_pseudo_parts/*.json")):
    r = json.load(open(path))
    seeds = [[row["seed"] for row in e["runs"].get(m, [])] for e in r["rhos"].values() for m in r["settings"]["methods"]]
    complete = bool(seeds) and all(s and s == seeds[0] for s in seeds)  # every method, the same seeds (paired)
    if complete:
        out.append(path)
    else:
        import sys; print("INCOMPLETE (left out of the table):", path, {rho: {m: len(v) for m, v in e["runs"].items()} for rho, e in r["rhos"].items()}, file=sys.stderr)
print(" ".join(out))
PY
)
python benchmarks/end_colour_digits.py --merge $files --output benchmarks/results/end_colour_digits_pseudo.json
{ for f in $D/a.log $D/b.log $D/A.log $D/B.log $D/A2.log $D/B2.log; do echo "==== $f"; grep -v "set the bias of the classifier" $f; done; } > benchmarks/results/end_colour_digits_pseudo.log
