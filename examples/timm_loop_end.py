"""EnD in a plain PyTorch / timm training loop, on a Hugging Face ``datasets.Dataset``.

The only change to an ordinary loop is ``get_debias_model`` and passing ``bias_labels`` to the forward; the
returned ``.loss`` is cross-entropy plus the EnD penalty in training mode.

    python examples/timm_loop_end.py --rho 0.997 --epochs 2
"""

from __future__ import annotations

import argparse

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader

from hf_debias import EnDConfig, get_debias_model
from hf_debias.data import build_colour_digits
from hf_debias.metrics import group_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rho", type=float, default=0.997, help="bias strength of the training set")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs")
    parser.add_argument("--n-train", type=int, default=20_000, help="training images")
    parser.add_argument("--alpha", type=float, default=10.0, help="EnD disentangling weight")
    parser.add_argument("--beta", type=float, default=1.0, help="EnD entangling weight")
    args = parser.parse_args()

    dataset = build_colour_digits(args.rho, n_train=args.n_train, n_validation=1000, n_test=2000, image_size=16)
    model = timm.create_model("simple_convnet", pretrained=False, num_classes=10)
    # The model's own preprocessing, from timm's data config.
    data_config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**data_config)

    def collate(rows):
        return {"pixel_values": torch.stack([transform(row["image"]) for row in rows]),
                "labels": torch.tensor([row["labels"] for row in rows]),
                "bias_labels": torch.tensor([row["bias_labels"] for row in rows])}

    model = get_debias_model(model, EnDConfig(alpha=args.alpha, beta=args.beta))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(dataset["train"], batch_size=256, shuffle=True, collate_fn=collate)
    for epoch in range(args.epochs):
        model.train()
        for step, batch in enumerate(loader):
            out = model(**batch)  # pixel_values, labels, bias_labels
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}: loss {out.loss.item():.3f} ce {out.ce_loss.item():.3f} "
                      + " ".join(f"{k} {v.item():.3f}" for k, v in out.penalty_terms.items()))

    model.eval()
    predictions, labels, bias = [], [], []
    with torch.no_grad():
        for batch in DataLoader(dataset["test_unbiased"], batch_size=512, collate_fn=collate):
            predictions.append(model(batch["pixel_values"]).logits.argmax(1).numpy())
            labels.append(batch["labels"].numpy())
            bias.append(batch["bias_labels"].numpy())
    result = group_accuracy(np.concatenate(predictions), np.concatenate(labels), np.concatenate(bias),
                            aligned_bias="identity")
    print(f"unbiased accuracy {result['accuracy']:.3f}, bias-conflicting {result['bias_conflicting_accuracy']:.3f}, "
          f"worst group {result['worst_group_accuracy']:.3f}")
    plain = model.unload()  # the plain timm model, no hooks left (its forward drops the normalisation)
    print(type(plain).__name__)


if __name__ == "__main__":
    main()
