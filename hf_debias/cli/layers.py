"""``hf-debias layers``: list a model's layers with their output shapes (candidates for ``--debias_layer``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    layers = subparsers.add_parser(
        "layers",
        help="list a model's layers with their output shapes (candidates for --debias-layer)",
        description="Build MODEL and print every module name with its type and output shape for one input of "
                    "--input-size. Starred rows are timm's feature stages. Any name can be used as the bottleneck "
                    "layer; 'NAME:input' means the module's input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    layers.add_argument("model", help="a timm model name, an hf-hub:/local-dir: timm id, or a transformers "
                                      "model id or folder")
    layers.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                        help="input shape without the batch; default: the model's own (timm) or 3 224 224")
    layers.add_argument("--num-classes", type=int, default=None, help="replace the head with this many classes")
    layers.add_argument("--pretrained", action="store_true",
                        help="load timm weights (needs them in the local cache or network access)")
    layers.add_argument("--features-only", action="store_true", help="show only the starred feature stages")
    layers.set_defaults(handler=run)
    return layers


def run(args: argparse.Namespace) -> int:
    from ..layers import format_layers, list_layers
    from ..loading import load_classifier

    model = load_classifier(args.model, num_classes=args.num_classes, pretrained=args.pretrained)
    input_size = args.input_size or tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    rows = list_layers(model, tuple(input_size))
    if args.features_only:
        rows = [row for row in rows if row.is_feature]
    print(f"{args.model} ({type(model).__name__}), input {'x'.join(map(str, input_size))}:")
    print(format_layers(rows))
    return 0
