"""RR-ClArC in a plain PyTorch / timm loop: find a shortcut's CAV from example images, then fine-tune along it.

1. Train a model on the controlled-artifact digits, where a corner patch marks most images of class 0.
2. ``compute_cav``: the patch's direction at a layer, from class-0 images with and without the patch.
3. ``get_debias_model(model, RRClArCConfig(cav=...))``: fine-tune; ``.loss`` adds the RR-ClArC penalty.
4. Compare clean and attacked (patch everywhere) accuracy before and after, and save the CAV.

    python examples/timm_loop_rr_clarc.py --n-train 20000 --lamb 1000
"""

from __future__ import annotations

import argparse

import timm
import torch

from hf_debias import RRClArCConfig, compute_cav, get_debias_model
from hf_debias.data import controlled_artifact_arrays
from hf_debias.metrics import model_artifact_accuracy
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor


def main(argv=None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=20_000, help="training images")
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs of the first (vanilla) training")
    parser.add_argument("--layer", default="stages.3", help="layer of the CAV and the penalty")
    parser.add_argument("--lamb", type=float, default=1000.0, help="RR-ClArC penalty weight")
    parser.add_argument("--cav-dir", default="patch_cav", help="where to save the CAV")
    args = parser.parse_args(argv)

    splits = controlled_artifact_arrays(n_train=args.n_train, n_validation=10, n_test=2000)
    x, y, patch = (images_to_tensor(splits["train"].images), torch.from_numpy(splits["train"].labels),
                   torch.from_numpy(splits["train"].artifact))
    model = timm.create_model("simple_convnet", pretrained=False, num_classes=10)
    fit(model, x, y, y, FitConfig(epochs=args.epochs))

    clean_images = images_to_tensor(splits["test_clean"].images)
    attacked_images = images_to_tensor(splits["test_attacked"].images)  # the same images with the patch

    def accuracy(current) -> dict[str, float]:
        return model_artifact_accuracy(current, clean_images, attacked_images, splits["test_clean"].labels)

    before = accuracy(model)
    in_class = y == 0
    cav = compute_cav(model, args.layer, (x[in_class], patch[in_class]), concept="corner patch")
    cav.save_pretrained(args.cav_dir)
    print(cav)

    corrected = get_debias_model(model, RRClArCConfig(cav=cav, lamb=args.lamb, freeze="conv_norm"))
    optimizer = torch.optim.Adam([p for p in corrected.parameters() if p.requires_grad], lr=1e-3)
    corrected.train()
    for start in range(0, x.shape[0] - 63, 64):  # one epoch, in order of the (already shuffled) data
        out = corrected(x[start:start + 64], labels=y[start:start + 64])
        optimizer.zero_grad()
        out.loss.backward()  # cross-entropy + lamb * RR-ClArC penalty
        optimizer.step()
    after = accuracy(corrected)
    for name, values in (("before", before), ("after RR-ClArC", after)):
        print(f"{name:>15}: clean {100 * values['clean_accuracy']:.1f}%, "
              f"attacked {100 * values['attacked_accuracy']:.1f}%")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
