"""Group metrics (worst-group, unbiased, bias-aligned / conflicting accuracy) and the controlled-artifact metrics
(clean vs attacked accuracy, TCAV, CAV alignment, artifact relevance, the artifact transplant check), as functions and as offline ``evaluate``
modules."""

from pathlib import Path

from .artifact import artifact_accuracy, cav_alignment, directional_derivatives, model_artifact_accuracy, tcav
from .artifact_relevance import artifact_relevance, process_artifact_masks
from .group import ALIGNED_IDENTITY, group_accuracy, groups_from_metrics, infer_aligned_bias
from .transplant import artifact_transplant_check, transplant_artifact

_HERE = Path(__file__).parent
GROUP_ACCURACY_MODULE = str(_HERE / "group_accuracy")
"""Path for ``evaluate.load(GROUP_ACCURACY_MODULE)``; it loads offline."""
ARTIFACT_ACCURACY_MODULE = str(_HERE / "artifact_accuracy")
"""Path for ``evaluate.load(ARTIFACT_ACCURACY_MODULE)``: clean / attacked accuracy and the drop."""
CAV_ALIGNMENT_MODULE = str(_HERE / "cav_alignment")
"""Path for ``evaluate.load(CAV_ALIGNMENT_MODULE)``: cosine between a CAV and the artifact's activation change."""
TCAV_MODULE = str(_HERE / "tcav")
"""Path for ``evaluate.load(TCAV_MODULE)``: TCAV score and sensitivity from directional derivatives."""
ARTIFACT_RELEVANCE_MODULE = str(_HERE / "artifact_relevance")
"""Path for ``evaluate.load(ARTIFACT_RELEVANCE_MODULE)``: R_bias, the share of heatmap relevance inside the mask."""


def load_group_accuracy(**kwargs):
    """``evaluate.load`` the bundled group-accuracy metric (no network needed)."""
    import evaluate

    return evaluate.load(GROUP_ACCURACY_MODULE, **kwargs)


__all__ = ["ALIGNED_IDENTITY", "ARTIFACT_ACCURACY_MODULE", "ARTIFACT_RELEVANCE_MODULE", "CAV_ALIGNMENT_MODULE",
           "GROUP_ACCURACY_MODULE", "TCAV_MODULE", "artifact_accuracy", "artifact_relevance",
           "artifact_transplant_check", "cav_alignment",
           "directional_derivatives", "group_accuracy", "groups_from_metrics", "infer_aligned_bias",
           "load_group_accuracy", "model_artifact_accuracy", "process_artifact_masks", "tcav", "transplant_artifact"]
