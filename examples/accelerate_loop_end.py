"""EnD in a plain Accelerate loop, on one or several GPUs / machines.

The wrapper from ``get_debias_model`` notices ``torch.distributed`` by itself: with more than one process, EnD's
penalty is computed on the batch gathered from every process (with gradients), so it is the same method as on
one device with the whole batch (``EnDConfig(global_batch=False)`` keeps a per-process penalty).

    accelerate launch --num_processes 4 examples/accelerate_loop_end.py               # 4 GPUs, one machine
    accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 \\
        --num_processes 8 examples/accelerate_loop_end.py                             # 2 machines x 4 GPUs
    torchrun --nproc_per_node 2 examples/accelerate_loop_end.py --cpu                 # 2 CPU processes (gloo)
"""

from __future__ import annotations

import argparse

import timm
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from hf_debias import EnDConfig, get_debias_model
from hf_debias.data import colour_digits_arrays
from hf_debias.fit_loop import images_to_tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rho", type=float, default=0.99, help="bias strength of the training set")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs")
    parser.add_argument("--n-train", type=int, default=20_000, help="training images")
    parser.add_argument("--batch-size", type=int, default=128, help="per-process batch size")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo) even if GPUs are present")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=args.cpu)
    train = colour_digits_arrays(args.rho, n_train=args.n_train, n_validation=10, n_test=10, image_size=16)["train"]
    dataset = TensorDataset(images_to_tensor(train.images), torch.from_numpy(train.labels),
                            torch.from_numpy(train.bias_labels))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = get_debias_model(timm.create_model("simple_convnet", num_classes=10), EnDConfig(alpha=10.0, beta=1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    model.train()
    for epoch in range(args.epochs):
        for step, (pixel_values, labels, bias_labels) in enumerate(loader):
            out = model(pixel_values, labels=labels, bias_labels=bias_labels)  # penalty on the global batch
            accelerator.backward(out.loss)
            optimizer.step()
            optimizer.zero_grad()
            if step % 50 == 0:
                terms = {key: round(value.item(), 4) for key, value in out.penalty_terms.items()}
                accelerator.print(f"epoch {epoch} step {step}: ce {out.ce_loss.item():.4f} {terms}")


if __name__ == "__main__":
    main()
