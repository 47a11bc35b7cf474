"""One-off probe (GPU): what the deferred finiteness check (one host wait in the backward) costs a GPU-bound step."""
import sys

import torch

sys.path.insert(0, "benchmarks")
import end_speed  # noqa: E402

import hf_debias.functional.end as end_module  # noqa: E402

device = torch.device("cuda")
for size, batch in ((224, 128), (64, 64)):
    with_check = end_speed.training_step_benchmark("resnet18", size, batch, 30, device)
    original = end_module._check_finite
    end_module._check_finite = lambda total: None
    without = end_speed.training_step_benchmark("resnet18", size, batch, 30, device)
    end_module._check_finite = original
    print(f"{size}px batch {batch}: with the check {with_check['overhead_percent']:+.2f} % "
          f"({with_check['seconds']}), without {without['overhead_percent']:+.2f} % ({without['seconds']})")
