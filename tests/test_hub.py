"""The Hub: save -> a Hub cache snapshot -> load by name offline (plain timm, transformers, hf_debias), CAV repos,
model cards, one-commit pushes through the real huggingface_hub client, and bad input. No network."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from transformers import (AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification,
                          ViTConfig, ViTForImageClassification)

import hf_debias
from hf_debias import CAV, EnDConfig, ModelCardInfo, PClArCConfig, RRClArCConfig, get_debias_model, load_model
from hf_debias.hub import PushError, push_cavs_to_hub, save_cavs
from hub_cache import FakeHub, offline_cache, publish

BATCH = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return offline_cache(monkeypatch, tmp_path)


def timm_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()


def vit_model():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=32, num_labels=3)).eval()


def timm_wrapper_model():
    torch.manual_seed(0)
    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=3)).eval()


def random_cav(channels, layer, pooling="max", concept="patch", seed=1):
    vector = torch.randn(channels, generator=torch.Generator().manual_seed(seed))
    return CAV(vector, concept=concept, layer=layer, pooling=pooling, concept_mean=2.0, clean_mean=-1.0,
               num_samples=40, num_concept_samples=20, quality={"auc": 0.91})


def logits(model, batch=BATCH):
    with torch.no_grad():
        out = model(batch)
    return out if isinstance(out, torch.Tensor) else out.logits


def saved(model, config, folder, **kwargs):
    corrected = get_debias_model(model, config).eval()
    expected = logits(corrected)
    corrected.save_pretrained(folder, **kwargs)
    return corrected, expected


# --------------------------------------------------------------------------- models that load plainly
@pytest.mark.parametrize("kind", ["timm", "timm_wrapper"])
def test_unchanged_forward_loads_by_name_in_timm_transformers_and_hf_debias(tmp_path, cache, kind):
    model, layer = (timm_model(), "layer2") if kind == "timm" else (timm_wrapper_model(), "timm_model.layer2")
    config = RRClArCConfig(cav=random_cav(48, layer), lamb=100.0, freeze="none")
    _, expected = saved(model, config, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "README.md", "cav", "config.json", "debias_config.json", "model.safetensors"]
    publish(cache, tmp_path / "saved", "org/rr-model")

    plain_timm = timm.create_model("hf-hub:org/rr-model", pretrained=True).eval()
    auto = AutoModelForImageClassification.from_pretrained("org/rr-model").eval()
    ours = load_model("org/rr-model")
    assert isinstance(ours, hf_debias.DebiasModel) and not ours.training
    assert ours.debias_config.lamb == 100.0 and torch.equal(ours.method.cav.vector, config.cav.vector)
    for loaded in (plain_timm, auto, ours):
        torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)


def test_a_hub_cache_whose_files_link_into_blobs_loads(tmp_path, cache):
    """huggingface_hub's real cache layout: snapshot files are symlinks into the repo's blobs/ (inside the lines)."""
    config = RRClArCConfig(cav=random_cav(48, "layer2"), lamb=10.0, freeze="none")
    _, expected = saved(timm_model(), config, tmp_path / "saved")
    snapshot = publish(cache, tmp_path / "saved", "org/blobs", blobs=True)
    assert (snapshot / "cav" / "cav.safetensors").is_symlink()
    loaded = load_model("org/blobs")
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)
    assert torch.equal(loaded.method.cav.vector, config.cav.vector)


def test_transformers_model_keeps_its_own_layout(tmp_path, cache):
    config = EnDConfig(layer="vit.layers.1", normalize_forward=False)
    _, expected = saved(vit_model(), config, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "vit"
    publish(cache, tmp_path / "saved", "org/vit-end")
    torch.testing.assert_close(logits(AutoModelForImageClassification.from_pretrained("org/vit-end").eval()),
                               expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(load_model("org/vit-end")), expected, rtol=0, atol=1e-6)


def test_an_image_processor_is_saved_and_pushed_with_the_model_so_pipeline_works(tmp_path, cache):
    from PIL import Image
    from transformers import ViTImageProcessor, pipeline

    model = vit_model()
    model.config.id2label = {0: "cat", 1: "dog", 2: "bird"}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    corrected = get_debias_model(model, EnDConfig(layer="vit.layers.1", normalize_forward=False)).eval()
    hub = FakeHub(cache)
    with hub.patch():
        corrected.push_to_hub("org/with-processor", image_processor=processor)
    assert "preprocessor_config.json" in hub.commits[0]["files"]
    classify = pipeline("image-classification", model="org/with-processor")
    predictions = classify(Image.new("RGB", (40, 40), "red"))
    assert {p["label"] for p in predictions} <= {"cat", "dog", "bird"} and len(predictions) == 3


def test_timm_config_is_fixed_for_transformers(tmp_path):
    """timm 1.0.31 writes model_args.num_classes, which TimmWrapper passes twice; it is dropped at save time."""
    saved(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2")), tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["num_classes"] == 3 and "num_classes" not in config.get("model_args", {})


# --------------------------------------------------------------------------- forward-changing corrections
FORWARD_CHANGING = {
    "timm_end": (timm_model, lambda: EnDConfig(layer="layer2", normalize_forward=True)),
    "timm_pclarc": (timm_model, lambda: PClArCConfig(cav=random_cav(48, "layer2"))),
    "vit_pclarc": (vit_model, lambda: PClArCConfig(cav=random_cav(32, "vit.layers.0", pooling="cls"))),
    "wrapper_end": (timm_wrapper_model, lambda: EnDConfig(layer="timm_model.layer2")),
}


@pytest.mark.parametrize("kind", sorted(FORWARD_CHANGING))
def test_forward_changing_corrections_never_load_silently_wrong(tmp_path, cache, kind):
    build, make_config = FORWARD_CHANGING[kind]
    plain = logits(build())
    corrected, expected = saved(build(), make_config(), tmp_path / "saved")
    assert not torch.allclose(plain, expected)  # the correction really changes the outputs
    publish(cache, tmp_path / "saved", "org/changed")

    with pytest.raises(Exception, match="load it with hf_debias.load_model") as refused:
        AutoModelForImageClassification.from_pretrained("org/changed")
    assert "upgrade" not in str(refused.value).lower()  # no red herring (TimmWrapper's "upgrade timm")
    if kind != "vit_pclarc":
        with pytest.raises(RuntimeError, match="load it with hf_debias.load_model"):
            timm.create_model("hf-hub:org/changed", pretrained=True)
    else:  # the model class called directly validates the guarded field too (and finds no weights under the usual name)
        with pytest.raises(Exception, match="load it with hf_debias.load_model"):
            ViTForImageClassification.from_pretrained("org/changed")
    torch.testing.assert_close(logits(load_model("org/changed")), expected, rtol=0, atol=1e-6)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "Load this model with hf_debias only" in card


# --------------------------------------------------------------------------- model cards
def test_model_card_has_metrics_before_and_after_in_model_index_and_the_chart(tmp_path):
    chart = tmp_path / "report.png"
    chart.write_bytes(b"\x89PNG fake")
    info = ModelCardInfo(bias="corner patch", dataset="controlled-artifact",
                         metrics={"test_attacked": {"accuracy": 0.767, "tcav_sensitivity": 0.02}},
                         baseline_metrics={"test_attacked": {"accuracy": 0.552, "tcav_sensitivity": 0.40}},
                         report_chart=chart, limitations="Measured on digits only.")
    saved(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2"), lamb=1000.0), tmp_path / "saved", card=info,
          repo_id="org/rr-model")
    folder = tmp_path / "saved"
    assert (folder / "report.png").read_bytes() == chart.read_bytes()
    card = ModelCard.load(folder / "README.md")
    results = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert results == {("accuracy", None): 0.767, ("tcav_sensitivity", None): 0.02,
                       ("accuracy", "before_correction"): 0.552, ("tcav_sensitivity", "before_correction"): 0.40}
    assert card.data.library_name == "timm" and "rrclarc" in card.data.tags
    text = card.text
    for expected in ("RR-ClArC", "corner patch", "| test_attacked | accuracy | 55.2 % | 76.7 % |", "TCAV",
                     "![before vs after](report.png)", 'timm.create_model("hf-hub:org/rr-model"',
                     'hf_debias.load_model("org/rr-model")', "Measured on digits only.", "`lamb` | `1000.0`",
                     "concept **patch**"):
        assert expected in text, expected


# --------------------------------------------------------------------------- CAVs
def test_several_cavs_in_one_repo_and_a_models_cav_subfolder(tmp_path, cache):
    ruler, patch = random_cav(48, "layer2", concept="ruler", seed=2), random_cav(96, "layer3", concept="patch")
    ruler.base_model_name_or_path = patch.base_model_name_or_path = "timm/test_resnet.r160_in1k"
    save_cavs([ruler, patch], tmp_path / "cavs", repo_id="org/cavs")
    publish(cache, tmp_path / "cavs", "org/cavs")
    for original in (ruler, patch):
        loaded = CAV.from_pretrained("org/cavs", subfolder=original.concept)
        assert torch.equal(loaded.vector, original.vector)
        assert loaded.metadata() == original.metadata()
        assert loaded.name_or_path == f"org/cavs/{original.concept}"
    card = ModelCard.load(tmp_path / "cavs" / "README.md")
    assert "| `ruler` | ruler |" in card.text and "| `patch` | patch |" in card.text
    assert card.data.base_model == "timm/test_resnet.r160_in1k"

    saved(timm_model(), RRClArCConfig(cav=ruler), tmp_path / "model")
    publish(cache, tmp_path / "model", "org/model")
    assert torch.equal(CAV.from_pretrained("org/model", subfolder="cav").vector, ruler.vector)
    # the Hub spelling "org/repo/subfolder" works wherever a CAV reference is accepted
    assert torch.equal(RRClArCConfig(cav="org/cavs/patch").load_cav().vector, patch.vector)


def test_a_cav_from_the_hub_is_refused_on_an_incompatible_model_or_layer(cache, tmp_path):
    cav = random_cav(48, "layer2", concept="ruler")
    cav.base_model_name_or_path = "test_resnet"
    save_cavs({"ruler": cav}, tmp_path / "cavs")
    publish(cache, tmp_path / "cavs", "org/cavs")
    loaded = CAV.from_pretrained("org/cavs", subfolder="ruler")
    with pytest.raises(ValueError, match="computed at layer 'layer2'.*acts at 'layer3'"):
        get_debias_model(timm_model(), RRClArCConfig(cav=loaded, layer="layer3"))
    with pytest.raises(ValueError, match="computed on 'test_resnet'.*this model is 'timm/resnet18"):
        get_debias_model(timm.create_model("resnet18", num_classes=3), RRClArCConfig(cav=loaded))
    other = timm.create_model("test_efficientnet", num_classes=3)
    with pytest.warns(UserWarning, match="Using it anyway"):
        corrected = get_debias_model(other, RRClArCConfig(cav=loaded, layer="blocks.1", allow_cav_mismatch=True,
                                                          freeze="none"))
    with pytest.raises(ValueError, match="The CAV has 48 channels but layer 'blocks.1' has 24"):
        corrected(BATCH, labels=torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- pushing
def test_push_model_is_one_commit_through_the_real_client_and_loads_by_name(tmp_path, cache, caplog, capsys):
    hub = FakeHub(cache)
    corrected = get_debias_model(timm_model(), PClArCConfig(cav=random_cav(48, "layer2"))).eval()
    expected = logits(corrected)
    caplog.set_level(logging.DEBUG)
    with hub.patch():
        corrected.push_to_hub("org/pushed", token="hf_SECRETTOKEN123", private=True,
                              card=ModelCardInfo(bias="corner patch"))
    assert hub.repos == ["org/pushed"] and hub.tokens == ["hf_SECRETTOKEN123"]
    assert len(hub.commits) == 1
    assert hub.commits[0]["files"] == ["README.md", "cav/cav.safetensors", "cav/cav_config.json", "config.json",
                                       "debias_config.json", "model.safetensors"]
    torch.testing.assert_close(logits(load_model("org/pushed")), expected, rtol=0, atol=1e-6)
    out = capsys.readouterr()
    assert "SECRETTOKEN" not in caplog.text + out.out + out.err


def test_push_cavs_is_one_commit_and_keeps_subfolders(tmp_path, cache):
    hub = FakeHub(cache)
    ruler, patch = random_cav(48, "layer2", concept="ruler"), random_cav(48, "layer2", concept="patch", seed=3)
    with hub.patch():
        push_cavs_to_hub("org/cavs", [ruler, patch])
        ruler.push_to_hub("org/one", subfolder="ruler")
    assert [commit["files"] for commit in hub.commits] == [
        ["README.md", "patch/cav.safetensors", "patch/cav_config.json", "ruler/cav.safetensors",
         "ruler/cav_config.json"],
        ["ruler/README.md", "ruler/cav.safetensors", "ruler/cav_config.json"]]
    assert torch.equal(CAV.from_pretrained("org/cavs", subfolder="patch").vector, patch.vector)
    assert ruler.name_or_path is None  # pushing from a staging folder does not re-point the CAV


def test_failed_push_commits_nothing_and_leaves_the_saved_folder_intact(tmp_path, cache, caplog):
    hub = FakeHub(cache, fail_with=ConnectionError("upload interrupted (token hf_SECRETTOKEN123)"))
    corrected = get_debias_model(timm_model(), EnDConfig(layer="layer2"))
    folder = tmp_path / "to_push"
    with hub.patch(), pytest.raises(PushError, match="nothing was committed") as error:
        corrected.push_to_hub("org/failed", save_directory=folder, token="hf_SECRETTOKEN123")
    assert hub.commits == [] and error.value.folder == folder
    assert "SECRETTOKEN" not in str(error.value) + caplog.text
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors",
                                                 "debias_config.json", "README.md"}
    torch.testing.assert_close(logits(load_model(folder)), logits(corrected.eval()), rtol=0, atol=1e-6)

    with hub.patch(), pytest.raises(PushError) as error:  # a staging folder is kept and named
        corrected.push_to_hub("org/failed")
    assert error.value.folder.is_dir() and str(error.value.folder) in str(error.value)
    shutil.rmtree(error.value.folder)


def test_pickle_files_are_never_pushed(tmp_path, cache):
    hub = FakeHub(cache)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "folder" / "training_args.bin").write_bytes(b"pickle")
    (tmp_path / "folder" / "optimizer.pt").write_bytes(b"pickle")
    with hub.patch():
        hf_debias.push_folder(tmp_path / "folder", "org/x")
    assert hub.commits[0]["files"] == ["model.safetensors"]


# --------------------------------------------------------------------------- bad input
def test_a_repo_missing_from_the_offline_cache_has_a_clear_message(cache):
    with pytest.raises(FileNotFoundError, match="'org/nothing' is not a local folder.*offline mode is on"):
        load_model("org/nothing")
    with pytest.raises(FileNotFoundError, match="'org/nothing' .*cav_config.json.*offline mode is on"):
        CAV.from_pretrained("org/nothing", subfolder="ruler")


def test_cav_files_with_a_wrong_shape_or_missing_metadata_are_refused(tmp_path):
    random_cav(8, "layer2").save_pretrained(tmp_path / "cav")
    metadata_path = tmp_path / "cav" / "cav_config.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "num_channels": 16}))
    with pytest.raises(ValueError, match=r"shape \(8,\), but cav_config.json says num_channels=16"):
        CAV.from_pretrained(tmp_path / "cav")
    metadata_path.write_text(json.dumps({key: value for key, value in metadata.items()
                                         if key not in ("layer", "pooling")}))
    with pytest.raises(ValueError, match=r"lacks the CAV metadata \['layer', 'pooling'\]"):
        CAV.from_pretrained(tmp_path / "cav")


def test_debias_config_from_a_newer_version_warns_and_loads_what_it_knows(tmp_path):
    _, expected = saved(timm_model(), EnDConfig(layer="layer2", alpha=3.0), tmp_path / "saved")
    path = tmp_path / "saved" / "debias_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hf_debias_version": "9.0.0",
                                "temperature": 0.5}))
    with pytest.warns(UserWarning, match=r"Ignoring unknown end config keys \['temperature'\].*9.0.0"):
        loaded = load_model(tmp_path / "saved")
    assert loaded.debias_config.alpha == 3.0
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("what", ["model", "cav"])
def test_a_truncated_safetensors_file_fails_clearly_and_loads_nothing(tmp_path, what):
    _, _ = saved(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2")), tmp_path / "saved")
    path = tmp_path / "saved" / ("model.safetensors" if what == "model" else "cav/cav.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    if what == "model":  # debias_config.json's record of sha256 sums catches it before safetensors is opened
        with pytest.raises(ValueError, match=r"changed \['model.safetensors'\].*Nothing was loaded"):
            load_model(tmp_path / "saved")
        (tmp_path / "saved" / "debias_config.json").unlink()  # a plain folder: safetensors' own check
    with pytest.raises(ValueError, match="not a readable safetensors file.*Nothing was loaded"):
        load_model(tmp_path / "saved") if what == "model" else CAV.from_pretrained(tmp_path / "saved" / "cav")


def test_models_without_a_hub_format_are_refused_with_the_choices(tmp_path):
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    corrected = get_debias_model(Plain(), EnDConfig(layer="body"))
    with pytest.raises(ValueError, match="Cannot save a Plain in a Hub format: hf_debias saves timm models"):
        corrected.save_pretrained(tmp_path / "saved")
