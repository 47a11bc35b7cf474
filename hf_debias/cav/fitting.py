"""Fit a concept direction from pooled activations: the signal (pattern) CAV and the filter CAVs.

The signal CAV (Pahde et al.; methods.md §2) is ``mean(a | t=1) − mean(a | t=0)``, which needs only per-class
sums (``ConceptStatistics``, O(C) memory, one streaming pass). The filter CAVs are linear models from
scikit-learn fitted on the pooled activations with balanced sample weights and a cross-validated
regularisation grid.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .._validation import check_choice

CAV_METHODS = ("signal", "fastcav", "svm", "ridge", "lasso", "logistic")
STREAMING_METHODS = ("signal", "fastcav")
"""Methods that need only per-class sums (one streaming pass); the others keep the pooled activations."""

OFFICIAL_GRID = tuple(10.0 ** exponent for exponent in range(-5, 5))
"""``1e-5, 1e-4, ..., 1e4``: the regularisation grid of the official RR-ClArC code (``utils/cav.py``), the same
for every filter CAV."""

REGULARISATION_GRID = {
    "svm": ("C", OFFICIAL_GRID),
    "logistic": ("C", OFFICIAL_GRID),
    "ridge": ("alpha", OFFICIAL_GRID),
    "lasso": ("alpha", OFFICIAL_GRID),
}
"""The hyper-parameter each filter CAV searches and its grid: the official code's ``OFFICIAL_GRID``. How the
best value is chosen is ours: the mean concept-detection ROC AUC over ``cv`` stratified folds with balanced sample
weights (the official code uses scikit-learn's ``GridSearchCV`` defaults: 5 folds scored by accuracy, or R² for
ridge / lasso); ties go to the value listed first (the strongest regularisation for ``C``, the weakest for
``alpha``)."""

MIN_AUC_SAMPLES_PER_VALUE = 20
"""Below this many held-out samples with the concept, or without it, the concept-detection AUC is reported with a
warning: it is too noisy to mean anything. The Hanley–McNeil standard error of an AUC of 0.9 is 0.05 with 20 of
each and 0.16 with 3 and 2 (and a perfect 1.000 on 5 images happens by chance for a useless direction one time
in ten)."""


class ConceptStatistics:
    """Running per-class sums of pooled activations (class 0: without the concept, 1: with it).

    Memory is O(C) whatever the number of samples; ``update`` accepts batches, and two statistics (e.g. from
    two processes) add up with ``merge``.
    """

    def __init__(self, num_channels: int):
        self.sums = torch.zeros(2, num_channels, dtype=torch.float64)
        self.counts = torch.zeros(2, dtype=torch.float64)

    @property
    def num_channels(self) -> int:
        return self.sums.shape[1]

    def update(self, pooled: torch.Tensor, concept_labels: torch.Tensor) -> None:
        pooled = pooled.detach().to("cpu", torch.float64)
        labels = check_concept_labels(concept_labels, pooled.shape[0], require_both=False)
        self.sums.index_add_(0, labels, pooled)
        self.counts += torch.bincount(labels, minlength=2).double()

    def merge(self, other: ConceptStatistics) -> ConceptStatistics:
        self.sums += other.sums
        self.counts += other.counts
        return self

    def means(self) -> torch.Tensor:
        """``[2, C]``: the mean pooled activation without (row 0) and with (row 1) the concept."""
        if (self.counts == 0).any():
            raise ValueError(f"A CAV needs samples with and without the concept; got {int(self.counts[1])} with "
                             f"and {int(self.counts[0])} without.")
        return self.sums / self.counts[:, None]

    def direction(self, method: str = "signal") -> torch.Tensor:
        """The unnormalised streaming direction: ``mean₁ − mean₀`` (signal) or ``mean₁ − mean`` (fastcav)."""
        check_choice("method", method, STREAMING_METHODS)
        means = self.means()
        if method == "signal":
            return means[1] - means[0]
        overall = self.sums.sum(dim=0) / self.counts.sum()
        return means[1] - overall


def check_concept_labels(labels: object, num_samples: int, *, require_both: bool = True) -> torch.Tensor:
    """0/1 concept labels as a long tensor; with ``require_both``, both values must occur."""
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.dim() != 1 or tensor.shape[0] != num_samples:
        raise ValueError(f"concept_labels must be 1-D with one 0/1 value per sample ({num_samples}), got shape "
                         f"{tuple(tensor.shape)}.")
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError("concept_labels must be 0 (concept absent) or 1 (present), got fractional values.")
    tensor = tensor.long()
    values = set(tensor.unique().tolist())
    if not values <= {0, 1}:
        raise ValueError(f"concept_labels must be 0 (concept absent) or 1 (present), got values {sorted(values)}.")
    if require_both and len(values) < 2:
        raise ValueError(f"concept_labels are all {values.pop() if values else '(empty)'}: a CAV needs samples with "
                         "(1) and without (0) the concept.")
    return tensor


def held_out_auc(scores: torch.Tensor, concept_labels: object) -> dict[str, float]:
    """The concept-detection ROC AUC of projections ``scores`` with how many samples it rests on.

    Returns ``{"auc", "held_out_with", "held_out_without"}``; without ``auc`` when the held-out samples have only
    one concept value (an AUC needs both). See ``describe_auc`` and ``auc_warning``.
    """
    scores = torch.as_tensor(scores).detach().double().cpu().reshape(-1)
    labels = check_concept_labels(concept_labels, scores.shape[0], require_both=False)
    with_concept = int(labels.sum())
    quality: dict[str, float] = {"held_out_with": with_concept, "held_out_without": labels.numel() - with_concept}
    if 0 < with_concept < labels.numel():
        from sklearn.metrics import roc_auc_score

        quality["auc"] = float(roc_auc_score(labels.numpy(), scores.numpy()))
    return quality


RESIDUAL_AUC_WARNING = 0.75
"""Residual AUC at or above which one direction is said to leave the concept readable (``residual_warning``)."""

RESIDUAL_PROBE_FOLDS = 3

RESIDUAL_MAX_SAMPLES = 512
"""At most this many held-out images keep their whole (unpooled) activation for ``residual_auc`` in ``compute_cav``."""


def residual_auc(rows: torch.Tensor, concept_labels: object, directions: torch.Tensor) -> float | None:
    """How readable the concept stays once the CAV's direction(s) are projected out: the ROC AUC of a linear probe
    (logistic regression, L2, ``RESIDUAL_PROBE_FOLDS``-fold cross-validated predictions) on held-out activations
    with their component along ``directions`` removed.

    Args:
        rows: ``[N, D]`` (pooled activations, or a spatial CAV's flattened map), or ``[N, P, C]``: the activation
            at every position (channels last), each position projected off the channel direction(s) and the whole
            map probed — the space the later layers read, where a direction that only captures the *pooled*
            concept leaves it readable (on a ViT block: 1.000 after removing a mean-pooled CAV from every token).
        concept_labels: 0/1 per row.
        directions: ``[D]`` (``[C]`` for 3-D rows), or ``[k, D]`` rows spanning several directions.

    About 0.5: no linear read-out of what is left tells the concept apart. For a signal CAV on the very rows it was
    fitted in (pooled), that holds by construction (the class means then agree; LEACE), so the figure that informs
    is the one on the unpooled positions (``compute_cav`` records that one) or for a filter CAV. Near 1: the concept
    is also encoded elsewhere, so removing or penalising this one direction alone can leave a shortcut whole (INLP,
    Ravfogel et al. 2020; methods.md §6). Returns ``None`` when fewer than ``RESIDUAL_PROBE_FOLDS`` samples of
    either concept value are given.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = torch.as_tensor(rows).detach().double().cpu()
    labels = check_concept_labels(concept_labels, rows.shape[0], require_both=False).numpy()
    if min(int(labels.sum()), int((1 - labels).sum())) < RESIDUAL_PROBE_FOLDS:
        return None
    basis = torch.as_tensor(directions).detach().double().cpu().reshape(-1, rows.shape[-1])
    basis = torch.linalg.qr(basis.T).Q.T  # orthonormal rows spanning the directions
    projected = (rows - (rows @ basis.T) @ basis).flatten(1)
    projected = projected - projected.mean(dim=0)
    scale = float(projected.std()) or 1.0
    probe = LogisticRegression(C=1.0, max_iter=2000)
    folds = StratifiedKFold(RESIDUAL_PROBE_FOLDS, shuffle=True, random_state=0)
    scores = cross_val_predict(probe, (projected / scale).numpy(), labels, cv=folds, method="decision_function")
    return float(roc_auc_score(labels, scores))


def residual_warning(quality: dict[str, float]) -> str | None:
    """Advice when one direction leaves the concept readable (``quality["residual_auc"]`` at or above
    ``RESIDUAL_AUC_WARNING``), else ``None``."""
    residual = quality.get("residual_auc")
    if residual is None or residual < RESIDUAL_AUC_WARNING:
        return None
    return (f"After projecting this CAV out, a linear probe still detects the concept on held-out images (residual "
            f"AUC {residual:.3f}; about 0.5 would mean the direction captured it): the concept is also encoded in "
            "other directions or positions, and a correction along this one direction can leave the shortcut whole. "
            "Try a spatial CAV (pooling='none') or, on a vision transformer, the patch embedding (compute_cav's "
            "default there), an earlier layer, and check the corrected model with an attacked split or an artifact "
            "transplant rather than TCAV.")


def describe_auc(quality: dict[str, float]) -> str:
    """One line: ``auc=1.000 on 5 held-out images (3 with, 2 without)``, with the caveat when it is too small, or
    why there is no AUC."""
    auc, with_concept, without = (quality.get(key) for key in ("auc", "held_out_with", "held_out_without"))
    if with_concept is None or without is None:
        return f"auc={auc:.3f} (held-out count not recorded)" if auc is not None else "no AUC: nothing held out"
    counts = f"{int(with_concept) + int(without)} held-out images ({int(with_concept)} with, {int(without)} without)"
    if auc is None:
        if with_concept + without == 0:
            return "no AUC: nothing held out (validation_fraction=0)"
        return f"no AUC: the held-out set has only one concept value ({counts})"
    warning = auc_warning(quality)
    text = f"auc={auc:.3f} on {counts}" + ("; too few to mean anything" if warning else "")
    residual = quality.get("residual_auc")
    if residual is not None:
        text += (f"; with the CAV projected out a linear probe still reads the concept at AUC {residual:.3f} "
                 "(0.5: the direction holds all of it" + ("; one direction leaves the concept readable)"
                                                          if residual >= RESIDUAL_AUC_WARNING else ")"))
    return text


def auc_warning(quality: dict[str, float]) -> str | None:
    """Why the recorded AUC cannot be trusted (none, one-valued or too small a held-out set), else ``None``."""
    auc, with_concept, without = (quality.get(key) for key in ("auc", "held_out_with", "held_out_without"))
    if with_concept is None or without is None or with_concept + without == 0:
        return None
    if auc is None:
        return (f"No concept-detection AUC: the held-out set has only one concept value ({int(with_concept)} "
                f"with the concept, {int(without)} without); hold out more samples of both kinds "
                "(validation_fraction, max_validation_samples).")
    if min(with_concept, without) < MIN_AUC_SAMPLES_PER_VALUE:
        return (f"The concept-detection AUC ({auc:.3f}) rests on {int(with_concept)} held-out images with the "
                f"concept and {int(without)} without; below {MIN_AUC_SAMPLES_PER_VALUE} of each it is too noisy to "
                "mean anything. Use more images or a larger validation_fraction.")
    return None


def fit_direction(activations: torch.Tensor, concept_labels: torch.Tensor, method: str, *,
                  fit_intercept: bool = True, cv: int = 3, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The unnormalised direction for ``method`` and what was chosen (e.g. the regularisation strength)."""
    check_choice("method", method, CAV_METHODS)
    if method in STREAMING_METHODS:
        stats = ConceptStatistics(activations.shape[1])
        stats.update(activations, concept_labels)
        return stats.direction(method), {}
    return _fit_filter(activations.detach().cpu().double().numpy(), concept_labels.cpu().numpy(), method,
                       fit_intercept=fit_intercept, cv=cv, seed=seed)


def _fit_filter(x: np.ndarray, t: np.ndarray, method: str, *, fit_intercept: bool, cv: int,
                seed: int) -> tuple[torch.Tensor, dict]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso, LogisticRegression, RidgeClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC
    from sklearn.utils.class_weight import compute_sample_weight

    param, grid = REGULARISATION_GRID[method]

    def make(value: float):
        if method == "svm":
            return LinearSVC(C=value, fit_intercept=fit_intercept, max_iter=5000, random_state=seed)
        if method == "logistic":
            return LogisticRegression(C=value, fit_intercept=fit_intercept, max_iter=2000)
        if method == "ridge":
            return RidgeClassifier(alpha=value, fit_intercept=fit_intercept)
        return Lasso(alpha=value, fit_intercept=fit_intercept, max_iter=5000, random_state=seed)

    def train(estimator, index: np.ndarray):
        targets = t[index] if method != "lasso" else 2.0 * t[index] - 1.0  # lasso regresses on ±1
        estimator.fit(x[index], targets, sample_weight=compute_sample_weight("balanced", t[index]))
        return estimator

    def score(estimator, index: np.ndarray) -> float:
        values = estimator.predict(x[index]) if method == "lasso" else estimator.decision_function(x[index])
        return roc_auc_score(t[index], values)

    folds = min(cv, int(np.bincount(t, minlength=2).min()))
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds >= 2:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            for value in grid:
                scores[value] = float(np.mean([score(train(make(value), fit_index), test_index)
                                               for fit_index, test_index in splitter.split(x, t)]))
            best = max(grid, key=lambda value: (scores[value], -grid.index(value)))
        else:
            best = grid[len(grid) // 2]
        estimator = train(make(best), np.arange(len(t)))
    direction = torch.from_numpy(np.asarray(estimator.coef_, dtype=np.float64).reshape(-1))
    if not torch.any(direction != 0):
        raise ValueError(f"The {method} CAV came out all zeros ({param}={best}): the concept is not linearly "
                         "detectable at this layer with this regularisation. Try another layer or method='signal'.")
    return direction, {param: best, "cv_auc": scores.get(best), "fit_intercept": fit_intercept}
