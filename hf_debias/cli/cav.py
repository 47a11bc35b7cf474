"""``hf-debias cav``: compute a bias CAV for a model from a dataset with a concept column, or from two image
folders (images with the concept, images without), and save it as ``cav.safetensors`` + ``cav_config.json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ._parsing import HelpFormatter

if TYPE_CHECKING:
    import torch

DESCRIPTION = """Compute a bias CAV (concept activation vector) for MODEL at --layer, from a dataset with a 0/1
concept column or from two image folders (images with the concept, images without), and save it as
cav.safetensors + cav_config.json in --output-dir (optionally also on the Hub).

    hf-debias cav simple_convnet --layer stages.2 --dataset controlled-artifact --only-class 0 --output-dir cav
    hf-debias cav resnet18 --layer layer3 --concept-dir ruler/ --clean-dir no_ruler/ --concept ruler \\
        --output-dir cav
"""
CONTROLLED_ARTIFACT = "controlled-artifact"
# hf_debias.cav.CAV_METHODS / POOLING_CHOICES, written out so that the parser is built without importing torch (a
# test checks that they agree).
CAV_METHODS = ("signal", "fastcav", "svm", "ridge", "lasso", "logistic")
POOLING_CHOICES = ("auto", "max", "mean", "cls", "none")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cav",
        help="compute a bias CAV from a dataset with a concept column or from two image folders",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a timm model name, an hf-hub:/local-dir: timm id, or a transformers model id "
                                      "or folder")
    parser.add_argument("--layer", default=None, help="module name of the layer (see `hf-debias layers MODEL`); "
                                                      "default: the input of the classifier head; on a vision "
                                                      "transformer its patch embedding (the recipe measured to "
                                                      "remove a shortcut there, BENCHMARKS.md §4g)")
    parser.add_argument("--output-dir", required=True, help="folder to write the CAV to")
    parser.add_argument("--concept", default=None, help="what the CAV means, recorded with it (e.g. 'ruler')")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="also push the CAV (with its card) to this Hub repo, in one commit")
    parser.add_argument("--hub-subfolder", default=None,
                        help="with --push-to-hub: the repo subfolder (one per concept in a multi-concept repo)")
    source = parser.add_argument_group("data (a dataset with a concept column, or two image folders)")
    source.add_argument("--dataset", default=None,
                        help=f"'{CONTROLLED_ARTIFACT}' (built in, offline), a Hugging Face dataset id or a local "
                             "imagefolder")
    source.add_argument("--split", default="train", help="dataset split to use")
    source.add_argument("--concept-column", default=None,
                        help="0/1 column saying whether the concept is present (default: 'artifact' for the "
                             "built-in benchmark, else 'concept')")
    source.add_argument("--only-class", type=int, default=None,
                        help="use only samples of this class (CAVs are usually fitted within the affected class)")
    source.add_argument("--label-column", default="labels", help="class column for --only_class")
    source.add_argument("--concept-dir", default=None, help="folder of images that show the concept")
    source.add_argument("--clean-dir", default=None, help="folder of images that do not")
    source.add_argument("--max-samples", type=int, default=None, help="use at most this many samples")
    fitting = parser.add_argument_group("fitting")
    fitting.add_argument("--method", default="signal", choices=CAV_METHODS,
                         help="signal (default, streaming) / fastcav, or a filter CAV: svm, ridge, lasso, logistic")
    fitting.add_argument("--pooling", default="auto", choices=POOLING_CHOICES,
                         help="how the layer's activation is pooled; auto: as the model reads the layer (mean behind "
                              "global average pooling, cls when the head reads the class token, none at a "
                              "vision transformer's patch embedding, else max, the "
                              "paper's choice), measured on the first batch; none: a spatial CAV that keeps every "
                              "position (for an artifact at a fixed place, e.g. a timestamp; one input size only; "
                              "use it with --debias rrclarc at an early layer and --freeze before_layer)")
    fitting.add_argument("--no-intercept", action="store_true", help="filter CAVs: fit without an intercept")
    fitting.add_argument("--validation-fraction", type=float, default=0.1,
                         help="share of samples held out for the concept-detection AUC (it warns below 20 held-out "
                              "images with the concept or without)")
    fitting.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    model = parser.add_argument_group("model")
    model.add_argument("--num-classes", type=int, default=None, help="replace the head with this many classes")
    model.add_argument("--pretrained", action="store_true", help="load timm weights for an architecture name")
    model.add_argument("--checkpoint", default=None,
                       help="a model.safetensors to load into the model (e.g. from `hf-debias train`)")
    model.add_argument("--device", default=None, help="where to run (default: cuda if available, else cpu)")
    model.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cav import compute_cav
    from ..loading import load_classifier

    model = load_classifier(args.model, num_classes=args.num_classes, pretrained=args.pretrained)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data = concept_data(args, model)
    cav = compute_cav(model, args.layer, data, concept=args.concept, method=args.method, pooling=args.pooling,
                      concept_column="concept", batch_size=args.batch_size, validation_fraction=args.validation_fraction,
                      fit_intercept=not args.no_intercept, progress=not args.no_progress)
    cav.save_pretrained(args.output_dir)
    print(f"{cav}\n{describe_cav(cav)}\nSaved to {args.output_dir}")
    if args.push_to_hub:
        commit = cav.push_to_hub(args.push_to_hub, subfolder=args.hub_subfolder)
        print(f"Pushed to {args.push_to_hub}: {getattr(commit, 'commit_url', commit)}")
    return 0


def describe_cav(cav) -> str:
    """Two lines: the pooling used and why, and the concept-detection AUC with the held-out count it rests on."""
    from ..cav import describe_auc

    reason = cav.fit_params.get("pooling_reason")
    pooling = f"pooling: {cav.pooling} ({reason})" if reason else f"pooling: {cav.pooling} (as requested)"
    return f"{pooling}\nconcept detection: {describe_auc(cav.quality)}"


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load a safetensors state dict, also one saved from a ``DebiasModel`` (keys prefixed ``model.``)."""
    from safetensors.torch import load_file

    state = load_file(path)
    if state and all(key.startswith("model.") for key in state):
        state = {key[len("model."):]: value for key, value in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}.")


def concept_data(args: argparse.Namespace, model: torch.nn.Module):
    """A ``datasets.Dataset`` with ``image`` and a 0/1 ``concept`` column from the chosen source."""
    import datasets

    folders = args.concept_dir is not None or args.clean_dir is not None
    if folders == (args.dataset is not None):
        raise ValueError("Give either --dataset or both --concept-dir and --clean-dir.")
    if folders:
        if not (args.concept_dir and args.clean_dir):
            raise ValueError("--concept-dir and --clean-dir go together: images with and without the concept.")
        files = [(path, 1) for path in _images_in(args.concept_dir)] + [(path, 0) for path in _images_in(args.clean_dir)]
        dataset = datasets.Dataset.from_dict({"image": [str(path) for path, _ in files],
                                              "concept": [label for _, label in files]}).cast_column("image",
                                                                                                   datasets.Image())
    else:
        if args.dataset == CONTROLLED_ARTIFACT:
            from ..data import build_controlled_artifact

            dataset = build_controlled_artifact()[args.split]  # the same data as `hf-debias train --dataset ...`
        elif Path(args.dataset).is_dir():
            dataset = datasets.load_dataset("imagefolder", data_dir=args.dataset, split=args.split)
        else:
            dataset = datasets.load_dataset(args.dataset, split=args.split)
        column = args.concept_column or ("artifact" if args.dataset == CONTROLLED_ARTIFACT else "concept")
        if column not in dataset.column_names:
            raise ValueError(f"The dataset has no concept column {column!r}; its columns are {dataset.column_names}. "
                             "Pass --concept-column NAME.")
        if args.only_class is not None:
            if args.label_column not in dataset.column_names:
                raise ValueError(f"--only-class needs the class column {args.label_column!r}; columns are "
                                 f"{dataset.column_names}.")
            dataset = dataset.filter(lambda label: label == args.only_class, input_columns=args.label_column)
        if column != "concept":
            dataset = dataset.rename_column(column, "concept")
        if "image" not in dataset.column_names:
            raise ValueError(f"The dataset has no 'image' column; its columns are {dataset.column_names}.")
        dataset = dataset.select_columns(["image", "concept"])
    if args.max_samples:
        dataset = dataset.shuffle(seed=0).select(range(min(args.max_samples, len(dataset))))
    return dataset  # compute_cav preprocesses 'image' with the model's own data config


def _images_in(folder: str) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{folder!r} is not a folder.")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return files
