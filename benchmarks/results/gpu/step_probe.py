"""One-off probe (GPU): where the EnD penalty's time goes in a small training step after the fused backward."""
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
import end_speed  # noqa: E402

from hf_debias.functional import end_penalty
from hf_debias.functional.end import _EnDTerms, _Groups

g = torch.Generator().manual_seed(0)
y = torch.randint(0, 10, (64,), generator=g).cuda()
b = torch.randint(0, 10, (64,), generator=g).cuda()
x0 = torch.randn(64, 512, generator=g).cuda()


def timed(name, fn, n=100):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    print(f"{name}: {(time.perf_counter() - start) / n * 1e3:.3f} ms")


def penalty():
    x = x0.clone().requires_grad_(True)
    end_penalty(x, y, b).backward()


def no_check():
    x = x0.clone().requires_grad_(True)
    r = _EnDTerms.apply(x, _Groups.of(y, b), None)
    (r[0] + r[1]).backward()


timed("end_penalty fwd+bwd, batch 64", penalty)
timed("same without the finiteness check", no_check)
timed("_Groups.of only", lambda: _Groups.of(y, b))
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                        torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        penalty()
    torch.cuda.synchronize()
events = prof.key_averages()
print("CUDA kernels per fwd+bwd:", sum(e.count for e in events if e.device_type.name == "CUDA") / 10)
print(events.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=50))

for _ in range(3):  # the same side-by-side step comparison as end_speed.py, repeated
    step = end_speed.training_step_benchmark("resnet18", 64, 64, 50, torch.device("cuda"))
    print(f"resnet18 step, batch 64 at 64 px: {step['seconds']} -> {step['overhead_percent']:+.2f} %")
