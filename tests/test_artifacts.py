"""The controlled-artifact benchmark data and its metrics (functions and offline evaluate modules)."""

import importlib.util
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch

from hf_debias.data import (ARTIFACTS, ArtifactSpec, build_controlled_artifact, controlled_artifact_arrays,
                            digit_arrays, insert_artifact)
from hf_debias.data.artifacts import BUILTIN_DIGITS
from hf_debias.metrics import (ARTIFACT_ACCURACY_MODULE, CAV_ALIGNMENT_MODULE, TCAV_MODULE, artifact_accuracy,
                               cav_alignment, tcav)


def small(**kwargs):
    return controlled_artifact_arrays(n_train=400, n_validation=50, n_test=60, **kwargs)


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_each_artifact_goes_into_a_share_p_of_one_class_and_every_attacked_image(kind):
    splits = small(artifact=ArtifactSpec(kind), target_class=3, p=0.5, image_size=28)
    train = splits["train"]
    in_class = train.labels == 3
    assert train.artifact[in_class].sum() == round(0.5 * in_class.sum())
    assert train.artifact[~in_class].sum() == 0
    assert splits["test_clean"].artifact.sum() == 0 and splits["test_attacked"].artifact.all()
    assert np.array_equal(splits["test_clean"].labels, splits["test_attacked"].labels)
    changed = (splits["test_clean"].images != splits["test_attacked"].images).any(axis=-1)
    masks = splits["test_attacked"].masks
    assert not (changed & ~masks).any()  # nothing changes outside the mask
    assert changed.any() and not splits["test_clean"].masks.any()


def benchmark():
    """benchmarks/rr_clarc_artifact.py as a module."""
    path = Path(__file__).parents[1] / "benchmarks" / "rr_clarc_artifact.py"
    spec = importlib.util.spec_from_file_location("rr_clarc_artifact", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drawn(kind: str, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the default artifact of ``kind`` puts into the masked pixels of uint8 ``original`` [N, H, W, 3],
    written out independently of ``insert_artifact``."""
    spec = ArtifactSpec(kind)
    if kind in ("patch", "timestamp"):
        return np.broadcast_to(np.asarray(spec.colour, np.uint8), original[mask].shape)
    if kind == "brightness":
        return np.rint(original[mask] * (1 - spec.strength) + 255.0 * spec.strength).astype(np.uint8)
    low = np.uint8(2 ** spec.bits - 1)
    pattern = insert_artifact(np.zeros((1, *original.shape[1:]), np.uint8), spec)[0][0]  # the pattern alone
    return (original & ~low)[mask] | np.broadcast_to(pattern, original.shape)[mask]


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_each_default_artifact_changes_the_target_class_training_images_only_and_every_attacked_image(kind):
    """The builder's defaults on the built-in digits (what the benchmark uses): compared with the same digits
    without artifacts, exactly the artifact images change, only inside their masks, to what the artifact draws."""
    sizes = {"n_train": 400, "n_validation": 200, "n_test": 60}
    base = digit_arrays(seed=0, **sizes, **BUILTIN_DIGITS)
    splits = controlled_artifact_arrays(artifact=kind, target_class=3, seed=0, **sizes)
    for name, source in (("train", "train"), ("validation", "validation"), ("test_clean", "test"),
                         ("test_attacked", "test")):
        split, (original, labels) = splits[name], base[source]
        assert np.array_equal(split.labels, labels)
        changed = (split.images != original).any(axis=-1)
        has = split.artifact.astype(bool)
        assert np.array_equal(changed.any(axis=(1, 2)), has), name  # every artifact image changed, no other one
        assert not (changed & ~split.masks).any() and not split.masks[~has].any(), name
        assert np.array_equal(split.images[split.masks], drawn(kind, original, split.masks)), name
        if has.any():  # the mask is the changed pixels, but for the few that already held the drawn value
            assert changed[has].sum() >= 0.8 * split.masks[has].sum(), name
    train = splits["train"]
    assert set(train.labels[train.artifact == 1]) == {3} and train.artifact[train.labels == 3].mean() == \
        pytest.approx(0.8, abs=0.02)
    assert splits["test_attacked"].artifact.all() and set(splits["test_attacked"].labels) == set(range(10))
    assert not splits["test_clean"].artifact.any()


def test_hidden_bits_survive_the_benchmarks_image_to_tensor_conversion():
    """The model sees the hidden bits: after the benchmark's uint8 -> normalised float conversion, the attacked
    inputs differ from the clean ones by exactly the changed pixel levels (/ 255 / 0.5), in most input values."""
    splits = controlled_artifact_arrays(artifact="hidden_bits", target_class=3, n_train=100, n_validation=200,
                                        n_test=60)
    clean = benchmark().tensors(splits["test_clean"])[0]
    attacked, labels, artifact, masks = benchmark().tensors(splits["test_attacked"])
    assert torch.equal(masks, torch.from_numpy(splits["test_attacked"].masks)) and masks.any()
    assert attacked.dtype == torch.float32 and attacked.shape == (60, 3, 20, 20) and artifact.all()
    levels = splits["test_attacked"].images.astype(np.float64) - splits["test_clean"].images
    expected = torch.from_numpy(levels / 255 / 0.5).permute(0, 3, 1, 2).float()
    difference = attacked - clean
    assert torch.allclose(difference, expected, atol=1e-5)
    bits = ArtifactSpec("hidden_bits").bits
    assert (difference != 0).float().mean() > 0.8
    assert difference.abs().max() <= (2 ** bits - 1) / 255 / 0.5 + 1e-5  # low bits only
    assert difference.abs().mean() > 2 / 255 / 0.5  # more than the last bit on average


def test_benchmark_runs_every_listed_artifact_and_class():
    module = benchmark()
    args = module.parse_args([])
    assert args.artifacts == list(ARTIFACTS) and args.classes == [0, 3]
    args = module.parse_args(["--quick"])
    assert (args.artifacts, args.classes, args.seeds) == (["patch"], [0], [0])
    args = module.parse_args(["--quick", "--artifacts", "timestamp", "hidden_bits", "--classes", "3", "7"])
    assert (args.artifacts, args.classes) == (["timestamp", "hidden_bits"], [3, 7])
    assert module.artifact_spec("patch", module.parse_args(["--patch-size", "6"])).size == 6
    assert module.artifact_spec("timestamp", module.parse_args(["--patch-size", "6"])) == ArtifactSpec("timestamp")
    for bad in (["--artifacts", "sticker"], ["--classes", "10"], ["--classes", "0", "0"],
                ["--artifacts", "timestamp", "--patch-size", "6"], ["--vanilla-only", "--lamb-grid", "0"]):
        with pytest.raises(SystemExit):
            module.parse_args(bad)
    entry = {"mean": 0.5, "std": 0.25, "values": [0.25, 0.75]}
    rows = {"vanilla": {"clean_accuracy": entry, "attacked_accuracy": entry, "attack_drop": entry,
                        "tcav_pooled_sensitivity": {"mean": 0.0123, "std": 0.0, "values": [0.0123] * 2},
                        "artifact_relevance": {"mean": 0.4, "std": 0.05, "values": [0.35, 0.45]},
                        "attribution_method": {"values": ["lrp", "lrp"]}}}
    combinations = [{"artifact": kind, "target_class": 3, "summary": {"accuracy": rows, "cav_alignment": {}}}
                    for kind in ("timestamp", "hidden_bits")]
    table = module.markdown(combinations, None, None, n_seeds=2).splitlines()
    assert table[0] == ("| artifact | class | method (2 seeds) | clean acc. | attacked acc. | gap | "
                        "TCAV sensitivity (pooled) | R_bias (attribution) |")
    cells = "50.0 ± 25.0 | 50.0 ± 25.0 | 50.0 ± 25.0 | 1.23e-02 | 0.400 ± 0.050 (lrp)"
    assert table[2:4] == [f"| timestamp | 3 | vanilla | {cells} |", f"| hidden_bits | 3 | vanilla | {cells} |"]
    assert not any("Step time" in line for line in table)  # --vanilla-only: no timing


def test_artifacts_draw_what_they_promise():
    images = np.full((2, 20, 20, 3), 100, dtype=np.uint8)
    patched, mask = insert_artifact(images, ArtifactSpec("patch", size=4))
    assert mask[0].sum() == 16 and mask[0, 15:19, 15:19].all() and (patched[0][mask[0]] == 255).all()
    bright, _ = insert_artifact(images, ArtifactSpec("brightness", strength=0.5))
    assert (bright == 178).all()  # 100 * 0.5 + 255 * 0.5
    hidden, _ = insert_artifact(images, ArtifactSpec("hidden_bits", bits=2))
    assert (np.abs(hidden.astype(int) - 100) <= 3).all() and (hidden != 100).any()
    assert np.array_equal(hidden[0], hidden[1])  # one fixed pattern
    stamp, mask = insert_artifact(np.zeros((1, 28, 28, 3), np.uint8), "timestamp")
    assert mask[0, 20:].any() and not mask[0, :20].any()  # bottom corner only
    with pytest.raises(ValueError, match="does not fit"):
        insert_artifact(np.zeros((1, 6, 6, 3), np.uint8), "timestamp")
    with pytest.raises(ValueError, match="artifact='sticker'.*patch"):
        ArtifactSpec("sticker")


def test_builds_a_datasetdict_from_builtin_digits_and_from_user_data():
    built = build_controlled_artifact(n_train=200, n_validation=20, n_test=30)
    assert set(built) == {"train", "validation", "test_clean", "test_attacked"}
    assert set(built["train"].column_names) == {"image", "labels", "artifact", "artifact_mask"}
    import datasets

    rng = np.random.default_rng(0)
    user = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"image": list(rng.integers(0, 255, (n, 24, 24, 3), dtype=np.uint8)),
                                           "label": rng.integers(0, 2, n)},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))
        for split, n in (("train", 40), ("test", 10))})
    out = build_controlled_artifact(user, artifact="brightness", target_class=1, p=1.0)
    assert set(out) == {"train", "test_clean", "test_attacked"}
    train = out["train"][:]
    assert np.array_equal(np.asarray(train["artifact"]), np.asarray(train["labels"]) == 1)
    with pytest.raises(ValueError, match="only apply to the built-in digits"):
        build_controlled_artifact(user, noise=0.5)


def test_artifact_accuracy_tcav_and_alignment_values_and_modules():
    result = artifact_accuracy([1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1])
    assert result == {"clean_accuracy": 0.5, "attacked_accuracy": 0.5, "attack_drop": 0.0}
    module = evaluate.load(ARTIFACT_ACCURACY_MODULE)
    assert module.compute(predictions=[1, 0], references=[1, 1], attacked=[0, 1])["attack_drop"] == 1.0
    assert tcav([0.5, -0.25, 1.0]) == {"tcav_score": pytest.approx(2 / 3),
                                       "tcav_pooled_sensitivity": pytest.approx(1.75 / 3)}
    assert evaluate.load(TCAV_MODULE).compute(predictions=[0.5, -0.25, 1.0])["tcav_score"] == pytest.approx(2 / 3)
    clean = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    moved = clean + torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    values = cav_alignment(torch.tensor([1.0, 0.0]), clean, moved)
    assert values["alignment"] == pytest.approx((1.0 + 2 ** -0.5) / 2)
    assert values["alignment_of_means"] == pytest.approx(2 / np.sqrt(5))
    computed = evaluate.load(CAV_ALIGNMENT_MODULE).compute(predictions=moved.tolist(), references=clean.tolist(),
                                                           cav=[1.0, 0.0])
    assert computed["alignment"] == pytest.approx(values["alignment"])


def test_model_artifact_accuracy_predicts_both_copies():
    class FirstPixel(torch.nn.Module):  # predicts class 1 where the top-left pixel is bright
        def forward(self, x):
            bright = (x[:, 0, 0, 0] > 0).float()
            return torch.stack([1 - bright, bright], dim=1)

    from hf_debias.metrics import model_artifact_accuracy

    clean = -torch.ones(4, 3, 2, 2)
    attacked = clean.clone()
    attacked[:2, :, 0, 0] = 1.0  # the artifact flips the first two predictions to class 1
    result = model_artifact_accuracy(FirstPixel(), clean, attacked, [0, 0, 0, 0])
    assert result == {"clean_accuracy": 1.0, "attacked_accuracy": 0.5, "attack_drop": 0.5}
