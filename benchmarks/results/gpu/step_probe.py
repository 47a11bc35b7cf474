"""One-off probe (GPU): where the EnD penalty's time goes in a small training step after the fused backward."""
import time

import timm
import torch
import torch.nn.functional as F

from hf_debias import EnDConfig, get_debias_model
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

torch.manual_seed(0)
x = torch.randn(64, 3, 64, 64).cuda()
vanilla = timm.create_model("resnet18", num_classes=10).cuda()
debiased = get_debias_model(timm.create_model("resnet18", num_classes=10).cuda(), EnDConfig())
opts = {"v": torch.optim.Adam(vanilla.parameters(), 1e-4), "e": torch.optim.Adam(debiased.parameters(), 1e-4)}


def vanilla_step():
    loss = F.cross_entropy(vanilla(x), y)
    opts["v"].zero_grad(set_to_none=True)
    loss.backward()
    opts["v"].step()


def end_step():
    loss = debiased(x, labels=y, bias_labels=b).loss
    opts["e"].zero_grad(set_to_none=True)
    loss.backward()
    opts["e"].step()


for _ in range(3):
    timed("resnet18 vanilla step", vanilla_step, 50)
    timed("resnet18 EnD step", end_step, 50)
