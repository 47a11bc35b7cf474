"""One-off probe (GPU): is the EnD penalty launch-bound, and does torch.compile fuse it away?"""
import time

import torch

from hf_debias.functional import end_penalty

g = torch.Generator().manual_seed(0)
x0 = torch.randn(256, 512, generator=g).cuda()
y = torch.randint(0, 10, (256,), generator=g).cuda()
b = torch.randint(0, 10, (256,), generator=g).cuda()


def step(fn):
    x = x0.clone().requires_grad_(True)
    fn(x, y, b).backward()


compiled = torch.compile(end_penalty)
for name, fn in (("eager", end_penalty), ("compiled", compiled)):
    for _ in range(5):
        step(fn)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(50):
        step(fn)
    torch.cuda.synchronize()
    print(f"{name}: {(time.perf_counter() - start) / 50 * 1e3:.2f} ms per fwd+bwd")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    step(end_penalty)
    torch.cuda.synchronize()
print("eager CUDA kernels per fwd+bwd:", sum(e.count for e in prof.key_averages()))
