"""Why the paper's RR-ClArC recipe misses beyond the corner patch: single-seed probes of the candidate fixes
(issue 17), on one artifact and class of the controlled-artifact benchmark (default: the timestamp on class 3).

Every probe corrects the same vanilla ``simple_convnet`` (3 epochs, as in ``rr_clarc_artifact.py``) with one
fine-tuning epoch (Adam lr 1e-3, batch 64) and reports clean / attacked test accuracy:

- ``pooled@L`` — RR-ClArC with a mean-pooled signal CAV at layer L (the paper's recipe at ``stages.3``, head only
  under ``conv_norm``; earlier layers with ``freeze="before_layer"`` and the per-position ``l2`` aggregation);
- ``subspace-k`` — the head-only penalty along a k-dimensional CAV *subspace* at ``stages.3``: the top-k principal
  directions of the paired change ``a(x + artifact) - a(x)`` on training images of the class (an oracle subspace:
  users rarely have pairs), penalised together (the one-direction-limit candidate);
- ``spatial@L`` — RR-ClArC with a spatial CAV (``pooling="none"``) at layer L, ``freeze="before_layer"``;
- ``oracle-head`` / ``oracle-all`` — no penalty: the head only, or the whole network, fine-tuned on training
  images with the artifact pasted into a random half of *every* class (the best a head-only / a full correction
  can do when the shortcut is taken away from the data).

    python benchmarks/rr_clarc_probes.py                              # timestamp, class 3, seed 0 (~10 min)
    python benchmarks/rr_clarc_probes.py --artifact brightness
    python benchmarks/rr_clarc_probes.py --quick                      # smoke run, used by the tests
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_json  # noqa: E402
from hf_debias import RRClArCConfig, compute_cav, get_debias_model
from hf_debias.data import ARTIFACTS, ArtifactSpec, controlled_artifact_arrays, digit_arrays, insert_artifact
from hf_debias.data.artifacts import BUILTIN_DIGITS
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor
from hf_debias.functional.rr_clarc import channels_last, gradient_target_output
from hf_debias.hooks import LayerHook
from hf_debias.layers import resolve_layer
from hf_debias.methods.base import Penalty
from hf_debias.metrics.artifact import model_artifact_accuracy

PROBES = ("pooled@stages.3", "pooled@stages.2", "pooled@stages.1", "subspace-4", "subspace-16",
          "spatial@stages.2", "spatial@stages.1", "spatial@stages.0", "oracle-head", "oracle-all")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "rr_clarc_probes")
    parser.add_argument("--artifact", choices=ARTIFACTS, default="timestamp")
    parser.add_argument("--target-class", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", nargs="+", choices=PROBES, default=list(PROBES))
    parser.add_argument("--lambs", type=float, nargs="+", default=[1000.0, 10000.0],
                        help="λ values for every penalised probe")
    args = parser.parse_args(argv)
    args.n_train, args.n_test, args.epochs = (1500, 300, 1.0) if args.quick else (20_000, 5_000, 3.0)
    if args.quick:
        args.probes, args.lambs = ["pooled@stages.3", "subspace-4", "spatial@stages.1", "oracle-head"], [1000.0]
    return args


@torch.no_grad()
def maps(model, layer: str, images: torch.Tensor) -> torch.Tensor:
    hook = LayerHook(resolve_layer(model, layer))
    model.eval()
    out = []
    for start in range(0, images.shape[0], 512):
        hook.reset()
        model(images[start:start + 512])
        out.append(hook.activation)
    hook.remove()
    return torch.cat(out)


def subspace_penalty(basis: torch.Tensor):
    """A replacement ``penalty`` for the RR-ClArC method: the squared length of the pooled latent gradient's
    component in the span of ``basis`` (orthonormal rows), the k-direction generalisation of ``l2_mean``."""
    def penalty(self, *, logits, labels, bias_labels):
        if not self.active:
            zero = logits.new_zeros(())
            return Penalty(total=zero, terms={"rrclarc_penalty": zero})
        output = gradient_target_output(logits, self.config.gradient_target, labels=labels)
        (grad,) = torch.autograd.grad(output, self._latent, create_graph=True)
        value = (channels_last(grad).mean(dim=1) @ basis.T).square().sum(dim=1).mean()
        return Penalty(total=self.config.lamb * value, terms={"rrclarc_penalty": value.detach()})
    return penalty


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = header(args)
    started = time.time()
    spec = ArtifactSpec(args.artifact)
    digits = digit_arrays(seed=args.seed, n_train=args.n_train, n_validation=10, n_test=args.n_test,
                          **BUILTIN_DIGITS)
    arrays = controlled_artifact_arrays({"train": digits["train"], "test": digits["test"]}, seed=args.seed,
                                        artifact=spec, target_class=args.target_class)
    x, y = images_to_tensor(arrays["train"].images), torch.from_numpy(arrays["train"].labels)
    artifact = torch.from_numpy(arrays["train"].artifact)
    x_clean, y_clean = images_to_tensor(arrays["test_clean"].images), arrays["test_clean"].labels
    x_attacked = images_to_tensor(arrays["test_attacked"].images)
    torch.manual_seed(args.seed)
    vanilla = timm.create_model("simple_convnet", num_classes=10)
    fit(vanilla, x, y, y, FitConfig(epochs=args.epochs, seed=args.seed), progress=False)
    tuned = FitConfig(epochs=0.3 if args.quick else 1.0, lr=1e-3, batch_size=64, seed=args.seed)
    target = y == args.target_class
    originals = digits["train"][0][digits["train"][1] == args.target_class][:1000]
    pasted = images_to_tensor(insert_artifact(originals, spec)[0])
    originals = images_to_tensor(originals)

    def score(model) -> dict[str, float]:
        return model_artifact_accuracy(model, x_clean, x_attacked, y_clean)

    rows = {"vanilla": score(vanilla)}
    for probe in args.probes:
        if probe.startswith("oracle"):
            model = copy.deepcopy(vanilla)
            flip = torch.from_numpy(np.random.default_rng(args.seed).random(len(y)) < 0.5)
            images = digits["train"][0].copy()
            images[flip.numpy()] = insert_artifact(images[flip.numpy()], spec)[0]
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(probe == "oracle-all" or name.startswith("fc."))
            fit(model, images_to_tensor(images), y, y, tuned, progress=False)
            rows[probe] = score(model)
            continue
        kind, _, layer = probe.partition("@") if "@" in probe else probe.partition("-")
        if kind == "subspace":
            layer, k = "stages.3", int(layer)
        for lamb in args.lambs:
            if kind == "subspace":
                change = (maps(vanilla, layer, pasted) - maps(vanilla, layer, originals)).mean(dim=(2, 3))
                basis = torch.linalg.svd(change.double(), full_matrices=False)[2][:k].float()
                cav = compute_cav(vanilla, layer, (x[target], artifact[target]), pooling="mean", progress=False)
                config = RRClArCConfig(cav=cav, lamb=lamb)
            else:
                pooling = "none" if kind == "spatial" else "mean"
                cav = compute_cav(vanilla, layer, (x[target], artifact[target]), pooling=pooling, progress=False)
                freeze = "conv_norm" if layer == "stages.3" and kind == "pooled" else "before_layer"
                aggregation = "l2" if kind == "pooled" and layer != "stages.3" else "l2_mean"
                config = RRClArCConfig(cav=cav, lamb=lamb, freeze=freeze, aggregation=aggregation)
            model = get_debias_model(copy.deepcopy(vanilla), config)
            if kind == "subspace":
                model.method.penalty = types.MethodType(subspace_penalty(basis), model.method)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit(model, x, y, y, tuned, progress=False)
            rows[f"{probe} λ={lamb:g}"] = score(model)
        print(f"{probe}: " + ", ".join(f"{name} {100 * r['clean_accuracy']:.1f}/{100 * r['attacked_accuracy']:.1f}"
                                      for name, r in rows.items() if name.startswith(probe)), flush=True)
    lines = [f"| probe ({args.artifact}, class {args.target_class}, seed {args.seed}) | clean | attacked | gap |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {100 * r['clean_accuracy']:.1f} | {100 * r['attacked_accuracy']:.1f} | "
              f"{100 * r['attack_drop']:.1f} |" for name, r in rows.items()]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    results.update({"rows": rows, "seconds": time.time() - started})
    write_json(args.output, results)
    args.output.with_suffix(".md").write_text(table)
    return results


if __name__ == "__main__":
    main()
