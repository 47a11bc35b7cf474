"""``hf-debias demo``: vanilla vs EnD on Colour-Digits and vanilla vs RR-ClArC on a corner-patch shortcut."""

from __future__ import annotations

import argparse

from ._parsing import HelpFormatter


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..demo import DemoSettings

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
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--rho", type=float, default=defaults.rho,
                      help="share of each training class drawn in its class colour (the bias strength)")
    demo.add_argument("--epochs", type=float, default=defaults.epochs, help="training epochs for each model")
    demo.add_argument("--alpha", type=float, default=defaults.alpha, help="EnD disentangling weight")
    demo.add_argument("--beta", type=float, default=defaults.beta, help="EnD entangling weight")
    demo.add_argument("--normalize-forward", choices=("train", "always", "never"), default=defaults.normalize_forward,
                      help="where EnD L2-normalises the bottleneck in the forward pass: train (the portable default: "
                           "training forward only, zero head bias; the saved model loads in plain timm and pipeline), "
                           "always (the paper's network; loads with hf_debias only), never (penalty only); default: "
                           "train where exact")
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
    demo.set_defaults(handler=run)
    return demo


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, quick_settings, run_demo

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
