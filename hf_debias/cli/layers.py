"""``hf-debias layers``: list a model's layers with their output shapes (candidates for ``--debias_layer``)."""

from __future__ import annotations

import argparse

from ._parsing import HelpFormatter


def add_parser(subparsers) -> argparse.ArgumentParser:
    layers = subparsers.add_parser(
        "layers",
        help="list a model's layers with their output shapes (candidates for --debias-layer)",
        description="Build MODEL and print every module name with its type and output shape for one input of "
                    "--input-size. Starred rows are timm's feature stages. Any name can be used as the bottleneck "
                    "layer; 'NAME:input' means the module's input.",
        formatter_class=HelpFormatter,
    )
    layers.add_argument("model", help="a timm model name, an hf-hub:/local-dir: timm id, or a transformers "
                                      "model id or folder")
    layers.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                        help="input shape without the batch; a square H x W is also the size the model is built "
                             "for (img_size, which ViTs need); default: the model's own (timm's input_size, "
                             "a transformers config's image_size) or 3 224 224")
    layers.add_argument("--num-classes", type=int, default=None, help="replace the head with this many classes")
    layers.add_argument("--pretrained", action="store_true",
                        help="load timm weights (needs them in the local cache or network access)")
    layers.add_argument("--features-only", action="store_true", help="show only the starred feature stages")
    layers.set_defaults(handler=run)
    return layers


def run(args: argparse.Namespace) -> int:
    from ..layers import format_layers, list_layers
    from ..loading import load_classifier

    if args.input_size is not None and min(args.input_size) < 1:
        raise ValueError(f"--input-size must be three positive integers C H W, got {args.input_size}.")
    square = args.input_size is not None and args.input_size[1] == args.input_size[2]
    model = load_classifier(args.model, num_classes=args.num_classes, pretrained=args.pretrained,
                            img_size=args.input_size[1] if square else None)
    input_size = tuple(args.input_size) if args.input_size else default_input_size(model)
    rows = list_layers(model, input_size)
    if args.features_only:
        rows = [row for row in rows if row.is_feature]
    print(f"{args.model} ({type(model).__name__}), input {'x'.join(map(str, input_size))}:")
    print(format_layers(rows))
    return 0


def default_input_size(model) -> tuple[int, int, int]:
    """The input a model is built for: timm's ``pretrained_cfg["input_size"]``, a transformers config's
    ``num_channels`` / ``image_size``, else ``(3, 224, 224)``."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return tuple(cfg["input_size"])
    config = getattr(model, "config", None)
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        height, width = size
    elif isinstance(size, int):
        height = width = size
    else:
        height = width = 224
    return (getattr(config, "num_channels", 3) or 3, int(height), int(width))
