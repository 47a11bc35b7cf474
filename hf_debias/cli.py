"""The ``hf-debias`` command line: ``demo``, ``layers``, ``cav`` and ``train``, thin layers over the same core."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _add_demo_parser(subparsers) -> None:
    from .demo import DemoSettings

    defaults = DemoSettings()
    demo = subparsers.add_parser(
        "demo",
        help="vanilla vs EnD on Colour-Digits, and vanilla vs RR-ClArC on a corner-patch shortcut (offline, a "
             "few minutes on a CPU)",
        description="Part 1 (EnD): train a small CNN twice on Colour-Digits, where the background colour gives the "
                    "class away for a share rho of the training images: once with cross-entropy only, once with "
                    "EnD; print unbiased, bias-conflicting, biased and worst-group test accuracy and write "
                    "report.json / report.png. Part 2 (RR-ClArC): train a CNN on noisy digits where a corner patch "
                    "marks most of class 0, compute the patch's CAV, fine-tune with RR-ClArC next to a lambda=0 "
                    "control; print clean vs attacked accuracy and write rrclarc_report.json / .png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--rho", type=float, default=defaults.rho,
                      help="share of each training class drawn in its class colour (the bias strength)")
    demo.add_argument("--epochs", type=float, default=defaults.epochs, help="training epochs for each model")
    demo.add_argument("--alpha", type=float, default=defaults.alpha, help="EnD disentangling weight")
    demo.add_argument("--beta", type=float, default=defaults.beta, help="EnD entangling weight")
    demo.add_argument("--normalize-forward", action=argparse.BooleanOptionalAction,
                      default=defaults.normalize_forward,
                      help="L2-normalise the bottleneck in the forward pass, as in the EnD paper's network")
    demo.add_argument("--n-train", type=int, default=defaults.n_train, help="number of training images")
    demo.add_argument("--n-test", type=int, default=defaults.n_test, help="images in each test split")
    demo.add_argument("--model", default=defaults.model, help="timm model name, built with pretrained=False")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="seed for data, initialisation and order")
    demo.add_argument("--output-dir", default=defaults.output_dir, help="folder for report.json and report.png")
    demo.add_argument("--part", choices=("all", "end", "rrclarc"), default="all", help="which part to run")
    demo.add_argument("--rrclarc-lamb", type=float, default=defaults.rrclarc_lamb, help="RR-ClArC penalty weight")
    demo.add_argument("--rrclarc-layer", default=defaults.rrclarc_layer,
                      help="layer of the patch CAV and the RR-ClArC penalty")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run on 2,000 images")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, quick_settings, run_demo

    if args.quick:
        settings = quick_settings(args.output_dir)
    else:
        settings = DemoSettings(rho=args.rho, epochs=args.epochs, alpha=args.alpha, beta=args.beta,
                                normalize_forward=args.normalize_forward, n_train=args.n_train, n_test=args.n_test,
                                model=args.model, seed=args.seed, output_dir=args.output_dir)
    settings.progress = not args.no_progress
    settings.parts = ("end", "rrclarc") if args.part == "all" else (args.part,)
    if not args.quick:
        settings.rrclarc_lamb, settings.rrclarc_layer = args.rrclarc_lamb, args.rrclarc_layer
    run_demo(settings)
    return 0


def _add_layers_parser(subparsers) -> None:
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
    layers.set_defaults(handler=_run_layers)


def _run_layers(args: argparse.Namespace) -> int:
    from .layers import format_layers, list_layers
    from .loading import load_classifier

    model = load_classifier(args.model, num_classes=args.num_classes, pretrained=args.pretrained)
    input_size = args.input_size or tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    rows = list_layers(model, tuple(input_size))
    if args.features_only:
        rows = [row for row in rows if row.is_feature]
    print(f"{args.model} ({type(model).__name__}), input {'x'.join(map(str, input_size))}:")
    print(format_layers(rows))
    return 0


def _add_train_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", add_help=False,
        help="fine-tune a classifier with DebiasTrainer; `--debias end` turns EnD on (see `hf-debias train --help`)",
    )
    train.add_argument("arguments", nargs=argparse.REMAINDER,
                       help="model, data and Trainer flags; `hf-debias train --help` lists them all")
    train.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .finetune import main as train_main

    arguments = args.arguments[1:] if args.arguments[:1] == ["--"] else args.arguments
    return train_main(arguments)


def _add_cav_parser(subparsers) -> None:
    from . import cav_command

    cav = subparsers.add_parser(
        "cav",
        help="compute a bias CAV from a dataset with a concept column or from two image folders",
        description=cav_command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cav_command.add_arguments(cav)
    cav.set_defaults(handler=cav_command.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-debias",
        description="Remove known biases from timm / Hugging Face image classifiers while fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"hf-debias {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_demo_parser(subparsers)
    _add_layers_parser(subparsers)
    _add_cav_parser(subparsers)
    _add_train_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # HfArgumentParser owns every `train` flag
        argv = ["train", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # bad input: a clear message, no traceback
        print(f"hf-debias: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
