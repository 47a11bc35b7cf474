"""``DebiasTrainingArguments``: ``TrainingArguments`` plus ``--debias`` and the method's options.

``HfArgumentParser`` turns them into flags of any script that already uses it. This module imports
``transformers.training_args`` only, not ``Trainer``, so that ``hf-debias train --help`` builds its parser without
loading the Trainer; ``DebiasTrainer`` lives in ``hf_debias.trainer``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers.training_args import TrainingArguments

from . import methods  # noqa: F401  (registers every method's config, so the choices below are complete)
from .config import DebiasConfig, _CONFIG_CLASSES, available_methods
from .freezing import FREEZE_POLICIES
from .functional.end import PAIRINGS
from .functional.rr_clarc import AGGREGATIONS, GRADIENT_TARGETS
from .functional.rrr import RRR_AGGREGATIONS, RRR_GRADIENT_TARGETS

DEBIAS_CHOICES = ("none", *available_methods())
CAV_METHODS = ("rrclarc", "pclarc", "aclarc")
"""Methods that read ``--cav``."""


def debias_methods(debias: str) -> list[str]:
    """The methods ``--debias`` names: one (``end``), or several joined by commas (``end,rrclarc``: one composed
    correction, ``get_debias_model(model, [EnDConfig(...), RRClArCConfig(...)])``); ``[]`` for ``none``.

    Raises:
        ValueError: an unknown method, ``none`` inside a list, or an empty name."""
    names = [name.strip() for name in str(debias).split(",")]
    for name in names:
        if name not in DEBIAS_CHOICES:
            raise ValueError(f"debias={debias!r}: {name!r} is not a method; choose one of "
                             f"{', '.join(DEBIAS_CHOICES)}, or several joined by commas (end,rrclarc).")
    if len(names) > 1 and "none" in names:
        raise ValueError(f"debias={debias!r}: 'none' cannot be combined with a correction.")
    return [] if names == ["none"] else names


def debias_flags(debias: str) -> list[str]:
    """Every argument name the methods of ``--debias`` read (their ``<method>_<field>`` and shared options), in
    the methods' order."""
    return list(dict.fromkeys(flag for method in debias_methods(debias) for flag in _method_flags(method).values()))


@dataclass(repr=False)  # keep TrainingArguments' __repr__, which redacts hub_token and every other *_token
class DebiasTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the debias options. Method options are named ``<method>_<config field>``
    (``end_alpha`` -> ``EnDConfig.alpha``); options several methods share carry no prefix (``cav``, ``freeze``).
    A new method adds its fields here and nothing else changes.

    An option of a method that ``--debias`` does not select, set to anything but its default, is an error;
    ``--baseline_results`` and the model-card texts are checked here, before any training."""

    debias: str = field(default="none", metadata={
        "help": f"bias correction method: {', '.join(DEBIAS_CHOICES)}; several joined by commas (end,rrclarc) "
                "apply together as one composed correction (each reads its own options; with several --cav, one "
                "part per CAV)"})
    debias_layer: str | None = field(default=None, metadata={
        "help": "bottleneck module name (see `hf-debias layers MODEL`); 'NAME:input' for a module's input; "
                "default: the input of the classifier head"})
    bias_label_column: str = field(default="bias_labels", metadata={
        "help": "dataset column with one integer bias id per sample; `hf-debias train` reads this column (or "
                "CelebA attribute) of the source data into 'bias_labels'. 'auto' (EnD only, data without bias "
                "labels): pseudo bias labels from a briefly trained, deliberately biased copy of the model "
                "(hf_debias.pseudo_bias_labels, options --pseudo_*), saved in OUTPUT_DIR/pseudo_bias_labels/"})
    pseudo_loss: str = field(default="gce", metadata={
        "help": "--bias_label_column auto: the biased auxiliary model's loss, gce (generalised cross-entropy, "
                "learns the shortcut first, as in LfF) or ce (plain cross-entropy)", "choices": ["gce", "ce"]})
    pseudo_q: float = field(default=0.7, metadata={"help": "--bias_label_column auto: GCE's exponent q, in (0, 1]"})
    pseudo_epochs: float = field(default=1.0, metadata={
        "help": "--bias_label_column auto: training epochs of the auxiliary model (short on purpose; may be "
                "fractional)"})
    pseudo_learning_rate: float = field(default=1e-3, metadata={
        "help": "--bias_label_column auto: Adam learning rate of the auxiliary model"})
    pseudo_batch_size: int = field(default=256, metadata={
        "help": "--bias_label_column auto: batch size of the auxiliary model's training"})
    pseudo_n_clusters: int | None = field(default=None, metadata={
        "help": "--bias_label_column auto: number of pseudo bias ids (default: the number of classes)"})
    pseudo_assignment: str = field(default="global", metadata={
        "help": "--bias_label_column auto: how the auxiliary model's bottleneck features become bias ids that mean "
                "the same in every class: global (one k-means over all samples, the default: best adjusted Rand "
                "index on Colour-Digits), prediction (the biased model's predicted class), aligned (k-means per "
                "class, matched to the global centres)", "choices": ["global", "prediction", "aligned"]})
    pseudo_seed: int | None = field(default=None, metadata={
        "help": "--bias_label_column auto: seed of the auxiliary training and k-means (default: --seed)"})
    end_alpha: float = field(default=1.0, metadata={"help": "EnD: weight of the disentangling term (>= 0)"})
    end_beta: float = field(default=1.0, metadata={"help": "EnD: weight of the entangling term (>= 0)"})
    end_pairing: str = field(default="all", metadata={
        "help": "EnD: 'all' pairs (the paper) or 'reference' (the official code's subset)", "choices": list(PAIRINGS)})
    end_normalize_forward: str | None = field(default=None, metadata={
        "help": "EnD: where the bottleneck is L2-normalised in the forward pass: train (portable: training forward "
                "only, zero head bias; the saved model loads in plain timm / transformers / pipeline), always (every "
                "forward, the paper's network; loads with hf_debias only), never (penalty only); default: train "
                "where exact, else always", "choices": ["train", "always", "never"]})
    end_global_batch: bool = field(default=True, metadata={
        "help": "EnD: under multi-process training compute the penalty on the batch gathered from every process "
                "(False: a per-process penalty)"})
    cav: str | None = field(default=None, metadata={
        "help": "rrclarc / pclarc / aclarc: the bias CAV, a folder or a Hub repo id (see `hf-debias cav`)"})
    allow_cav_mismatch: bool = field(default=False, metadata={
        "help": "use a CAV recorded for another layer or base model (warns instead of refusing)"})
    freeze: str = field(default="conv_norm", metadata={
        "help": "rrclarc / aclarc / rrr: what stays frozen: conv_norm (the paper: convolutions and norms), "
                "before_layer (everything up to the layer), none", "choices": list(FREEZE_POLICIES)})
    rrclarc_lamb: float = field(default=1.0, metadata={"help": "RR-ClArC: penalty weight lambda (>= 0)"})
    rrclarc_gradient_target: str = field(default="random_signs", metadata={
        "help": "RR-ClArC: what is differentiated (official_logprobs: the official code's log(softmax + 1e-5))",
        "choices": list(GRADIENT_TARGETS)})
    rrclarc_target_class: int | None = field(default=None, metadata={
        "help": "RR-ClArC: the class for --rrclarc_gradient_target class"})
    rrclarc_aggregation: str = field(default="l2_mean", metadata={
        "help": "RR-ClArC: how the latent gradient's projection is aggregated (l2_mean: the paper)",
        "choices": list(AGGREGATIONS)})
    rrclarc_penalty_form: str = field(default="auto", metadata={
        "help": "RR-ClArC: gradient (the paper: the latent gradient along the CAV), finite_difference (the output "
                "change when the activation moves from the clean to the concept mean along the CAV), auto: "
                "finite_difference on vision transformers, where the gradient form left a shortcut whole "
                "(BENCHMARKS.md §4g), else gradient", "choices": ["auto", "gradient", "finite_difference"]})
    rrr_lamb: float = field(default=1.0, metadata={"help": "RRR: penalty weight lambda (>= 0)"})
    rrr_mask_column: str = field(default="artifact_mask", metadata={
        "help": "RRR: dataset column with one mask per image ([H, W], 1 = the artifact region whose input gradient "
                "is penalised, the image's size)"})
    rrr_gradient_target: str = field(default="log_prob_sum", metadata={
        "help": "RRR: what is differentiated with respect to the input (log_prob_sum: Ross et al.'s sum of "
                "log-probabilities; official_logprobs: the RR-ClArC code's mean of log(softmax + 1e-5))",
        "choices": list(RRR_GRADIENT_TARGETS)})
    rrr_aggregation: str = field(default="l2", metadata={
        "help": "RRR: l2 (Ross et al.: squared input gradient inside the mask) or official_cosine (the RR-ClArC "
                "code: cosine similarity of |gradient| and the mask)", "choices": list(RRR_AGGREGATIONS)})
    bias_description: str | None = field(default=None, metadata={
        "help": "model card: the bias that is corrected, in words (e.g. 'background colour')"})
    baseline_results: str | None = field(default=None, metadata={
        "help": "model card: an uncorrected run's eval results (its output_dir, eval_results.json, or "
                "{split: {metric: value}} JSON), shown as 'before'"})
    card_dataset: str | None = field(default=None, metadata={
        "help": "model card: the dataset the metrics were measured on (a Hub id or a name)"})
    allow_debias_config_change: bool = field(default=False, metadata={
        "help": "resume from a checkpoint whose debias_config.json differs from this run's options (method or "
                "hyper-parameters), continuing with this run's; logged as a warning instead of refused"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.debias = ",".join(debias_methods(self.debias)) or "none"
        self.check_debias_options()
        self.check_pseudo_label_options(self.debias_config())  # also validates the method's options now
        _check_card_inputs(self)  # not at the first checkpoint save

    def debias_config(self) -> DebiasConfig | None:
        """The config that ``--debias`` and its options describe, or ``None`` for ``--debias none``; several
        methods (or several comma-separated ``--cav``) give a ``ComposedConfig`` of one part each."""
        names = debias_methods(self.debias)
        if not names:
            return None
        cavs = [part.strip() for part in self.cav.split(",")] if self.cav else [self.cav]
        uses_cav = [method for method in names if method in CAV_METHODS]
        if len(cavs) > 1:
            if len(uses_cav) == 1:  # --debias rrclarc --cav ruler,tag: one part per CAV
                index = names.index(uses_cav[0])
                names = names[:index] + uses_cav * len(cavs) + names[index + 1:]
            elif len(uses_cav) != len(cavs):
                raise ValueError(f"--cav {self.cav!r} names {len(cavs)} CAVs for --debias {self.debias}, whose "
                                 f"CAV methods are {uses_cav or 'none'}: give one CAV per CAV method, in order, or "
                                 "several CAVs for a single CAV method (one part each).")
        parts, next_cav = [], iter(cavs)
        for method in names:
            values = {name: getattr(self, flag) for name, flag in _method_flags(method).items()}
            if method in CAV_METHODS and "cav" in values:
                values["cav"] = next(next_cav) if len(cavs) > 1 else self.cav
            parts.append(_CONFIG_CLASSES[method](**values))
        if len(parts) == 1:
            return parts[0]
        from .methods.composed import ComposedConfig

        return ComposedConfig(corrections=parts)

    def check_debias_options(self) -> None:
        """Raise ``ValueError`` naming every option of another method than ``--debias`` that differs from its
        default (``--debias end --cav X``, ``--debias none --end_alpha 50``): it would be silently ignored."""
        used = set(debias_flags(self.debias)) | set(_GENERAL_FIELDS)
        unused = []
        for own in dataclasses.fields(DebiasTrainingArguments):
            if own.name not in _OWN_FIELDS or own.name in used:
                continue
            default = own.default if own.default is not dataclasses.MISSING else own.default_factory()
            value = getattr(self, own.name)
            if value != default:
                owners = [method for method in available_methods() if own.name in _method_flags(method).values()]
                unused.append(f"--{own.name} {value!r} (an option of {', '.join(owners) or 'no method'})")
        if unused:
            raise ValueError(f"--debias {self.debias} does not use {'; '.join(unused)}. Remove "
                             f"{'it' if len(unused) == 1 else 'them'}, or select the method "
                             f"{'it belongs' if len(unused) == 1 else 'they belong'} to with --debias.")

    @property
    def uses_pseudo_labels(self) -> bool:
        """``--bias_label_column auto``: the bias labels are computed by ``hf_debias.pseudo_bias_labels``."""
        return self.bias_label_column == PSEUDO_LABEL_COLUMN

    def pseudo_label_config(self):
        """The ``PseudoLabelConfig`` of the ``pseudo_*`` options (``pseudo_seed`` defaults to ``seed``)."""
        from .pseudo_labels import PseudoLabelConfig

        return PseudoLabelConfig(loss=self.pseudo_loss, q=self.pseudo_q, epochs=self.pseudo_epochs,
                                 batch_size=self.pseudo_batch_size, lr=self.pseudo_learning_rate,
                                 n_clusters=self.pseudo_n_clusters, assignment=self.pseudo_assignment,
                                 seed=self.seed if self.pseudo_seed is None else self.pseudo_seed)

    def check_pseudo_label_options(self, config: DebiasConfig | None) -> None:
        """``--bias_label_column auto`` needs EnD (the only method that reads bias labels); ``--pseudo_*`` options
        without it would be silently ignored. Both are errors; the ``pseudo_*`` values are validated now."""
        if not self.uses_pseudo_labels:
            changed = [f"--{name} {getattr(self, name)!r}" for name in _PSEUDO_FIELDS
                       if getattr(self, name) != _default_of(name)]
            if changed:
                raise ValueError(f"{'; '.join(changed)}: the --pseudo_* options apply to pseudo bias labels only, "
                                 f"but --bias_label_column is {self.bias_label_column!r}. Pass "
                                 "--bias_label_column auto, or remove them.")
            return
        parts = [] if config is None else [c.debias_method for c in getattr(config, "corrections", [config])]
        if "end" not in parts:
            raise ValueError(f"--bias_label_column auto computes pseudo bias labels for EnD, but --debias "
                             f"{self.debias} ({', '.join(parts) or 'no correction'}) reads no bias labels. Use "
                             "--debias end (or a composition with an EnD part), or remove --bias_label_column auto.")
        try:
            self.pseudo_label_config()  # every pseudo_* value checked now, not after the model is loaded
        except ValueError as err:
            raise ValueError(f"--pseudo_* options (pseudo_learning_rate is lr, pseudo_batch_size batch_size): "
                             f"{err}") from None


_OWN_FIELDS = {f.name for f in dataclasses.fields(DebiasTrainingArguments)} - {
    f.name for f in dataclasses.fields(TrainingArguments)}
PSEUDO_LABEL_COLUMN = "auto"
"""``--bias_label_column auto``: pseudo bias labels (``hf_debias.pseudo_labels``)."""
_PSEUDO_FIELDS = ("pseudo_loss", "pseudo_q", "pseudo_epochs", "pseudo_learning_rate", "pseudo_batch_size",
                  "pseudo_n_clusters", "pseudo_assignment", "pseudo_seed")
_GENERAL_FIELDS = ("debias", "bias_label_column", "bias_description", "baseline_results", "card_dataset",
                   "allow_debias_config_change", *_PSEUDO_FIELDS)
"""Options that apply whatever ``--debias`` is; every other own field belongs to one or more methods."""


def _default_of(name: str):
    own = DebiasTrainingArguments.__dataclass_fields__[name]
    return own.default if own.default is not dataclasses.MISSING else own.default_factory()


def _method_flags(method: str) -> dict[str, str]:
    """``{config field: argument name}`` for the options ``--debias method`` reads: ``<method>_<field>``, else
    the shared ``<field>`` (``cav``, ``freeze``...), and ``debias_layer`` for the layer. Empty for ``none``."""
    if method == "none":
        return {}
    base_fields = {f.name for f in dataclasses.fields(DebiasConfig)}
    flags = {"layer": "debias_layer"}
    for config_field in dataclasses.fields(_CONFIG_CLASSES[method]):
        if not config_field.init or config_field.name in base_fields:
            continue
        for flag in (f"{method}_{config_field.name}", config_field.name):
            if flag in _OWN_FIELDS:
                flags[config_field.name] = flag
                break
    return flags


def _baseline_file(path: str) -> Path:
    file = Path(path)
    if file.is_dir():
        file = file / "eval_results.json"
    if not file.is_file():
        raise ValueError(f"baseline_results {path!r} is neither a JSON file nor a run folder with eval_results.json.")
    return file


def _is_metric_value(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return key.endswith("_aligned")  # the group flags of group_accuracy
    return isinstance(value, (int, float))


def _baseline_data(path: str) -> dict:
    """The baseline file's JSON, checked: an object of numbers (Trainer's flat ``eval_results.json``) or of
    ``{metric: number}`` objects, one per split. Errors name the file and the field."""
    file = _baseline_file(path)
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"baseline_results {str(file)!r} is not readable JSON: {error}.") from error
    if not isinstance(data, dict) or not data:
        raise ValueError(f"baseline_results {str(file)!r} must be a non-empty JSON object of metrics "
                         f"({{metric: number}} or {{split: {{metric: number}}}}), got {type(data).__name__} "
                         f"{json.dumps(data)[:80]}.")
    nested = [key for key, value in data.items() if isinstance(value, dict)]
    if nested and len(nested) != len(data):
        flat = next(key for key in data if key not in nested)
        raise ValueError(f"baseline_results {str(file)!r} mixes splits ({nested[0]!r}: {{...}}) with flat metrics "
                         f"({flat!r}); use one form.")
    for split, values in (data.items() if nested else [(None, data)]):
        for key, value in values.items():
            if not _is_metric_value(key, value):
                where = f"{split}.{key}" if split is not None else key
                raise ValueError(f"baseline_results {str(file)!r}: field {where!r} must be a number, got "
                                 f"{json.dumps(value)[:80]}.")
    return data


def _check_card_inputs(args: DebiasTrainingArguments) -> None:
    """``--bias_description``, ``--card_dataset`` and ``--baseline_results`` checked before any training."""
    for name in ("bias_description", "card_dataset"):
        value = getattr(args, name)
        if value is not None and (not isinstance(value, str) or not value.strip() or "\n" in value
                                  or "\r" in value):
            raise ValueError(f"--{name} must be one non-empty line of text, got {value!r}.")
    if args.baseline_results is not None:
        _baseline_data(args.baseline_results)
