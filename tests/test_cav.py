"""CAVs: fitting (signal equals the class-mean difference), streaming computation over a model with bounded
memory, storage, and the ClArC baselines that use them."""

import gc
import json
import re
import warnings

import psutil
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from hf_debias import CAV, AClArCConfig, PClArCConfig, compute_cav, get_debias_model
from hf_debias.cav import CAV_METHODS, pool_activation


def concept_data(n=400, channels=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=generator) < 0.3).long()
    direction = torch.zeros(channels)
    direction[2] = 1.0
    activations = torch.randn(n, channels, generator=generator) + 2.0 * labels[:, None] * direction
    return activations, labels, direction


def test_signal_cav_is_the_normalised_difference_of_class_means():
    activations, labels, _ = concept_data()
    cav = CAV.fit(activations, labels, concept="stripe", layer="layer3")
    difference = activations[labels == 1].mean(0) - activations[labels == 0].mean(0)
    assert torch.allclose(cav.vector, difference / difference.norm(), atol=1e-6)
    assert cav.vector.norm().item() == pytest.approx(1.0, abs=1e-6)
    fast = CAV.fit(activations, labels, method="fastcav")
    assert torch.allclose(fast.vector, cav.vector, atol=1e-6)  # mean(with) - mean(all) has the same direction
    scores = activations @ cav.vector
    assert cav.concept_mean == pytest.approx(scores[labels == 1].mean().item(), rel=1e-5)
    assert cav.clean_mean == pytest.approx(scores[labels == 0].mean().item(), rel=1e-5)
    assert (cav.num_samples, cav.num_concept_samples) == (400, int(labels.sum()))


@pytest.mark.parametrize("method", [m for m in CAV_METHODS if m not in ("signal", "fastcav")])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_filter_cavs_find_the_concept_and_record_the_search(method, fit_intercept):
    activations, labels, direction = concept_data()
    cav = CAV.fit(activations, labels, method=method, fit_intercept=fit_intercept, validation_fraction=0.25)
    assert float(cav.vector @ direction) > 0.8
    assert cav.quality["auc"] > 0.85  # measured on the held-out quarter
    assert cav.fit_params["fit_intercept"] is fit_intercept
    assert set(cav.fit_params) & {"C", "alpha"}


def test_save_and_load_round_trip(tmp_path):
    activations, labels, _ = concept_data()
    cav = CAV.fit(activations, labels, concept="stripe", layer="layer3", pooling="mean",
                  base_model_name_or_path="timm/resnet18.a1_in1k", revision="abc", validation_fraction=0.2)
    cav.save_pretrained(tmp_path / "stripe")
    assert sorted(p.name for p in (tmp_path / "stripe").iterdir()) == ["cav.safetensors", "cav_config.json"]
    loaded = CAV.from_pretrained(tmp_path / "stripe")
    assert torch.equal(loaded.vector, cav.vector)
    assert loaded.metadata() == cav.metadata()
    assert json.loads((tmp_path / "stripe" / "cav_config.json").read_text())["num_channels"] == 8


def test_wrong_shapes_and_labels_fail_clearly(tmp_path):
    activations, labels, _ = concept_data()
    with pytest.raises(ValueError, match="all 0"):
        CAV.fit(activations, torch.zeros(400, dtype=torch.long))
    with pytest.raises(ValueError, match="0 .concept absent. or 1"):
        CAV.fit(activations, labels * 2)
    with pytest.raises(ValueError, match=r"pooled floats shaped \[N, C\]"):
        CAV.fit(torch.randn(10, 3, 2, 2), labels[:10])
    with pytest.raises(ValueError, match="method='pca'.*signal"):
        CAV.fit(activations, labels, method="pca")
    cav = CAV.fit(activations, labels)
    cav.save_pretrained(tmp_path)
    save_file({"cav": torch.ones(5)}, str(tmp_path / "cav.safetensors"))
    with pytest.raises(ValueError, match=r"shape \(5,\).*num_channels=8"):
        CAV.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has 8 channels but layer 'x' has 5"):
        cav.check_channels(5, "x")


def small_convnet():
    torch.manual_seed(0)
    return timm.create_model("simple_convnet", num_classes=3)


def images_with_concept(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=generator)
    t = (torch.arange(n) % 3 == 0).long()
    x[t == 1, :, :4, :4] += 3.0  # the concept: a bright corner
    return x, t


def test_compute_cav_streams_and_equals_the_cav_fitted_on_collected_activations():
    model = small_convnet()
    x, t = images_with_concept()
    streamed = compute_cav(model, "stages.1", (x, t), batch_size=16, validation_fraction=0, progress=False)
    with torch.no_grad():
        acts = {}
        handle = model.stages[1].register_forward_hook(lambda m, a, out: acts.setdefault("a", out))
        model.eval()(x)
        handle.remove()
    pooled = pool_activation(acts["a"], "max")
    direct = CAV.fit(pooled, t)
    assert torch.allclose(streamed.vector, direct.vector, atol=1e-5)
    assert streamed.layer == "stages.1" and streamed.base_model_name_or_path == "simple_convnet"
    # The same from a DataLoader of dicts and from a datasets.Dataset.
    loader = torch.utils.data.DataLoader([{"pixel_values": xi, "concept": ti} for xi, ti in zip(x, t)], batch_size=10)
    from_loader = compute_cav(model, "stages.1", loader, validation_fraction=0, progress=False)
    assert torch.allclose(from_loader.vector, direct.vector, atol=1e-5)
    import datasets

    dataset = datasets.Dataset.from_dict({"pixel_values": x.numpy(), "concept": t.numpy()}).with_format("torch")
    from_dataset = compute_cav(model, "stages.1", dataset, validation_fraction=0, progress=False)
    assert torch.allclose(from_dataset.vector, direct.vector, atol=1e-5)


def test_compute_cav_holds_out_samples_for_the_auc():
    model = small_convnet()
    x, t = images_with_concept(n=300)
    held_with, held_without = _expected_held_out(t, every=5)
    cav = compute_cav(model, "stages.0", (x, t), validation_fraction=0.2, progress=False)
    assert cav.num_samples == 300 - held_with - held_without and cav.quality["auc"] > 0.95
    assert (cav.quality["held_out_with"], cav.quality["held_out_without"]) == (held_with, held_without)
    assert 40 <= held_with + held_without <= 80  # about a fifth
    svm = compute_cav(model, "stages.0", (x, t), method="svm", validation_fraction=0.2, progress=False)
    assert svm.num_samples == cav.num_samples and svm.quality["auc"] > 0.95


def _expected_held_out(concept: torch.Tensor, every: int) -> tuple[int, int]:
    """How many samples with / without the concept ``compute_cav`` holds out (``held_out_mask`` by index)."""
    from hf_debias.cav.compute import held_out_mask

    held = concept[held_out_mask(torch.arange(concept.numel()), every)]
    return int((held == 1).sum()), int((held == 0).sum())


def test_streaming_cav_memory_does_not_grow_with_the_number_of_samples():
    channels, batch = 4096, 256
    model = nn.Sequential(nn.Flatten(), nn.Identity())
    rss = []

    def batches(n_batches):
        process = psutil.Process()
        for index in range(n_batches):
            if index in (10, n_batches - 1):
                gc.collect()
                rss.append(process.memory_info().rss)
            x = torch.randn(batch, channels)
            yield x, (torch.arange(batch) % 2)

    compute_cav(model, "1", batches(80), validation_fraction=0, progress=False)  # 20,480 samples
    growth = rss[1] - rss[0]
    kept_if_collected = 70 * batch * channels * 4  # what keeping the pooled activations would add: 294 MB
    # The allocator's own caching moves RSS by ~15 MB either way; keeping the rows would add 20x that.
    assert growth < kept_if_collected / 5, f"memory grew by {growth / 2**20:.0f} MiB"


def test_compute_cav_rejects_bad_input():
    model = small_convnet()
    x, t = images_with_concept()
    with pytest.raises(ValueError, match="pooling='cls' needs a token activation"):
        compute_cav(model, "stages.1", (x, t), pooling="cls", progress=False)
    with pytest.raises(ValueError, match="Layer 'stage.1' not found|closest"):
        compute_cav(model, "stage.1", (x, t), progress=False)
    with pytest.raises(ValueError, match="with and 0 without|samples with"):
        compute_cav(model, "stages.1", (x, torch.ones_like(t)), validation_fraction=0, progress=False)
    loader = [{"pixel_values": x[:4], "artifact": t[:4]}]
    with pytest.raises(ValueError, match="'concept'.*concept_column"):
        compute_cav(model, "stages.1", loader, progress=False)


def test_pclarc_moves_every_sample_to_the_clean_mean():
    model = small_convnet()
    x, t = images_with_concept()
    cav = compute_cav(model, "stages.1", (x, t), validation_fraction=0, progress=False)
    corrected = get_debias_model(model, PClArCConfig(cav=cav)).eval()
    assert corrected.debias_config.layer == "stages.1"  # taken from the CAV
    acts = {}
    handle = model.stages[2].register_forward_pre_hook(lambda m, args: acts.setdefault("a", args[0]))
    with torch.no_grad():
        corrected(x)
    handle.remove()
    projection = pool_activation(acts["a"], "max") @ cav.vector
    assert torch.allclose(projection, torch.full_like(projection, cav.clean_mean), atol=1e-4)


def test_aclarc_shifts_to_the_concept_mean_in_training_only():
    model = small_convnet()
    x, t = images_with_concept()
    cav = compute_cav(model, "stages.1", (x, t), validation_fraction=0, progress=False)
    with torch.no_grad():
        plain = model.eval()(x)
    wrapped = get_debias_model(model, AClArCConfig(cav=cav, freeze="none"))
    with torch.no_grad():
        assert torch.allclose(wrapped.eval()(x).logits, plain, atol=1e-6)  # evaluation: the plain model
    acts = {}
    handle = model.stages[2].register_forward_pre_hook(lambda m, args: acts.setdefault("a", args[0]))
    wrapped.train()(x, labels=t)
    handle.remove()
    projection = pool_activation(acts["a"], "max") @ cav.vector
    assert torch.allclose(projection, torch.full_like(projection, cav.concept_mean), atol=1e-4)


# --------------------------------------------------------------------------- pooling="auto"
def test_auto_pooling_follows_how_the_model_reads_the_layer():
    from hf_debias.cav import auto_pooling

    model = small_convnet()
    x = torch.randn(4, 3, 16, 16)
    assert auto_pooling(model, "stages.3", x).pooling == "mean"  # the last stage: global average pooling + fc
    assert auto_pooling(model, "stages.3.0", x).pooling == "max"  # its conv: BatchNorm and Tanh follow per position
    choice = auto_pooling(model, "stages.1", x)
    assert choice.pooling == "max" and "position by position" in choice.reason and "paper" in choice.reason
    assert auto_pooling(model, None, x).pooling == "mean" and "[N, C]" in auto_pooling(model, None, x).reason
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32)
    x32 = torch.randn(2, 3, 32, 32)
    assert auto_pooling(vit, f"blocks.{len(vit.blocks) - 1}", x32).pooling == "cls"  # head reads the class token
    assert auto_pooling(vit, "blocks.0", x32).pooling == "max"
    assert model.training and vit.training  # modes are restored
    from transformers import ResNetConfig, ResNetForImageClassification

    hf = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                   num_labels=3))
    assert auto_pooling(hf, "resnet.encoder.stages.1", x32).pooling == "mean"  # read through the pooler
    assert auto_pooling(hf, "resnet.encoder.stages.0", x32).pooling == "max"


def test_compute_cav_auto_records_the_choice_and_equals_the_explicit_pooling():
    model = small_convnet()
    x, t = images_with_concept()
    for layer, expected in (("stages.3", "mean"), ("stages.1", "max")):
        auto = compute_cav(model, layer, (x, t), validation_fraction=0, progress=False)
        explicit = compute_cav(model, layer, (x, t), pooling=expected, validation_fraction=0, progress=False)
        assert auto.pooling == expected and torch.equal(auto.vector, explicit.vector)
        assert auto.fit_params["pooling_reason"] and "pooling_reason" not in explicit.fit_params


# --------------------------------------------------------------------------- the AUC and what it rests on
def test_the_auc_comes_with_its_held_out_counts_and_a_warning_when_small():
    from hf_debias.cav import MIN_AUC_SAMPLES_PER_VALUE, describe_auc

    model = small_convnet()
    x, t = images_with_concept(n=48)  # one in 10 held out: a handful of images
    held_with, held_without = _expected_held_out(t, every=10)
    assert 0 < held_with < 20 and 0 < held_without < 20
    with pytest.warns(UserWarning, match=f"rests on {held_with} held-out images with the concept and {held_without} "
                                         "without; below 20"):
        cav = compute_cav(model, "stages.0", (x, t), validation_fraction=0.1, progress=False)
    assert (cav.quality["held_out_with"], cav.quality["held_out_without"]) == (held_with, held_without)
    assert describe_auc(cav.quality) == (f"auc={cav.quality['auc']:.3f} on {held_with + held_without} held-out "
                                         f"images ({held_with} with, {held_without} without); too few to mean anything")
    assert MIN_AUC_SAMPLES_PER_VALUE == 20
    x, t = images_with_concept(n=800)
    held_with, held_without = _expected_held_out(t, every=10)
    assert held_with >= 20 and held_without >= 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="After projecting this CAV out")  # stages.0: a local concept
        big = compute_cav(model, "stages.0", (x, t), validation_fraction=0.1, progress=False)
    assert describe_auc(big.quality) == (
        f"auc={big.quality['auc']:.3f} on {held_with + held_without} held-out images ({held_with} with, "
        f"{held_without} without); with the CAV projected out a linear probe still reads the concept at AUC "
        f"{big.quality['residual_auc']:.3f} (0.5: the direction holds all of it; one direction leaves the concept "
        "readable)")
    assert big.fit_params["residual_space"] == "positions"  # the max-pooled CAV at stages.0: later layers read every
    assert big.quality["residual_auc"] > 0.9               # position, where the corner patch stays readable


def test_a_one_valued_held_out_set_says_no_auc_instead_of_nothing():
    from hf_debias.cav import describe_auc

    model = small_convnet()
    x, t = images_with_concept(n=60)
    t = (torch.arange(60) % 10 == 5).long()  # every 10th sample (0, 10, ...) is held out: none has the concept
    with pytest.warns(UserWarning, match="No concept-detection AUC: the held-out set has only one concept value "
                                         r"\(0 with the concept, 6 without\)"):
        cav = compute_cav(model, "stages.0", (x, t), validation_fraction=0.1, progress=False)
    assert "auc" not in cav.quality
    assert describe_auc(cav.quality) == ("no AUC: the held-out set has only one concept value (6 held-out images "
                                         "(0 with, 6 without))")
    assert describe_auc({}) == "no AUC: nothing held out"
    assert describe_auc({"auc": 0.91}) == "auc=0.910 (held-out count not recorded)"


def test_filter_cavs_search_the_official_grid():
    from hf_debias.cav.fitting import REGULARISATION_GRID

    official = tuple(10.0 ** exponent for exponent in range(-5, 5))  # utils/cav.py of the official code
    assert all(grid == official for _, grid in REGULARISATION_GRID.values())
    assert official[0] == 1e-5 and official[-1] == 1e4 and len(official) == 10


def test_cli_cav_says_which_pooling_it_used_and_what_the_auc_rests_on(tmp_path, capsys):
    from image_layouts import write_concept_folders

    from hf_debias.cav import POOLING_CHOICES
    from hf_debias.cli import cav as cav_command
    from hf_debias.cli import main

    assert cav_command.POOLING_CHOICES == POOLING_CHOICES and cav_command.CAV_METHODS == CAV_METHODS
    write_concept_folders(tmp_path)
    common = ["--concept-dir", str(tmp_path / "with"), "--clean-dir", str(tmp_path / "without"),
              "--validation-fraction", "0.25", "--no-progress"]
    with pytest.warns(UserWarning, match=r"rests on \d+ held-out images with the concept and \d+ without") as caught:
        assert main(["cav", "simple_convnet", "--layer", "stages.3", "--output-dir", str(tmp_path / "a"),
                     *common]) == 0
    held_with, held_without = map(int, re.search(r"rests on (\d+) held-out images with the concept and (\d+) without",
                                                  str(caught[-1].message)).groups())
    out = capsys.readouterr().out
    assert ("pooling: mean (the logits' gradient is the same at every position of 'stages.3', so the model reads it "
            "through global average pooling)") in out
    assert re.search(rf"concept detection: auc=[01]\.\d{{3}} on {held_with + held_without} held-out images "
                     rf"\({held_with} with, {held_without} without\); too few to mean anything", out)
    saved = CAV.from_pretrained(tmp_path / "a")
    assert saved.pooling == "mean" and saved.quality["held_out_with"] == held_with and "global average" in \
        saved.fit_params["pooling_reason"]
    with pytest.warns(UserWarning):
        assert main(["cav", "simple_convnet", "--layer", "stages.3", "--pooling", "max", "--output-dir",
                     str(tmp_path / "b"), *common]) == 0
    assert "pooling: max (as requested)" in capsys.readouterr().out


def test_the_held_out_share_takes_both_concept_values_when_labels_alternate():
    # index % k would hold out only even indices: with labels arange(n) % 2 that is one concept value, no AUC.
    model = timm.create_model("simple_convnet", pretrained=False, num_classes=3)
    pixel_values = torch.randn(200, 3, 16, 16)
    concept = torch.arange(200) % 2
    pixel_values[concept == 1, :, :4, :4] = 3.0
    cav = compute_cav(model, "stages.3", (pixel_values, concept), validation_fraction=0.5, progress=False)
    assert cav.quality["held_out_with"] > 20 and cav.quality["held_out_without"] > 20
    assert 80 <= cav.quality["held_out_with"] + cav.quality["held_out_without"] <= 120  # about half
    assert cav.quality["auc"] is not None


def test_held_out_mask_is_a_fixed_share_independent_of_batching():
    from hf_debias.cav.compute import held_out_mask

    index = torch.arange(10_000)
    whole = held_out_mask(index, 10)
    assert torch.equal(torch.cat([held_out_mask(part, 10) for part in index.split(37)]), whole)
    assert 900 <= int(whole.sum()) <= 1100
