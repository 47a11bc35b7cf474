import warnings, traceback, timm, torch
from hf_debias import EnDConfig, get_debias_model
m = get_debias_model(timm.create_model("resnet18", num_classes=10).cuda(), EnDConfig())
opt = torch.optim.Adam(m.parameters(), 1e-4)
x = torch.randn(64, 3, 64, 64).cuda(); y = torch.randint(0, 10, (64,)).cuda(); b = torch.randint(0, 10, (64,)).cuda()
for _ in range(2):
    loss = m(x, labels=y, bias_labels=b).loss; opt.zero_grad(); loss.backward(); opt.step()
torch.cuda.synchronize()
def show(message, category, filename, lineno, file=None, line=None):
    print("SYNC:", message); traceback.print_stack(limit=8)
warnings.showwarning = show
torch.cuda.set_sync_debug_mode("warn")
loss = m(x, labels=y, bias_labels=b).loss; opt.zero_grad(); loss.backward(); opt.step()
torch.cuda.set_sync_debug_mode(0)
print("done")
