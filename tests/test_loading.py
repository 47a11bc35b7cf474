"""load_classifier's routing (timm names, timm-saved repos under any org, transformers), img_size, class names,
the refusal of remote code, and the train / eval transforms."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import torch
from PIL import Image

import hf_debias.models  # noqa: F401  (registers simple_convnet)
from hf_debias.data.transforms import image_transform_for, train_eval_transforms
from hf_debias.loading import load_classifier, set_class_names


def tiny_vit_folder(path, num_labels=3, image_size=16):
    """A tiny ViTForImageClassification with a ViTImageProcessor beside it, as a user's local folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=num_labels)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.25, 0.5],
                      image_std=[0.5, 0.5, 0.25]).save_pretrained(path)
    return path


def timm_saved_folder(path, num_classes=4):
    """A resnet18 saved by timm's own save_for_hf (what push_to_hf_hub uploads): config.json with architecture,
    pretrained_cfg and model_args.num_classes (timm 1.0.31), no model_type."""
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=num_classes).eval()
    save_for_hf(model, path, safe_serialization=True)
    config = json.loads((path / "config.json").read_text())
    assert "model_type" not in config and config["model_args"]["num_classes"] == num_classes  # the case to handle
    return model


def test_img_size_for_vits_and_the_transforms_follow(caplog):
    with caplog.at_level(logging.INFO, logger="hf_debias"):
        vit = load_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32)
    assert [r.getMessage() for r in caplog.records] == [
        "vit_tiny_patch16_224: random weights (pretrained=False; pass --pretrained for timm's pretrained weights)"]
    assert vit.pretrained_cfg["input_size"] == (3, 32, 32) and vit.patch_embed.img_size == (32, 32)
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    train, evaluation = train_eval_transforms(vit)
    image = Image.new("RGB", (40, 50), (10, 200, 30))
    assert train([image]).shape == evaluation([image]).shape == (1, 3, 32, 32)
    # a convolutional network takes no img_size; the size still reaches the transforms and the saved config
    resnet = load_classifier("resnet18", num_classes=2, img_size=24)
    assert resnet.pretrained_cfg["input_size"] == (3, 24, 24)
    assert train_eval_transforms(resnet)[1]([image]).shape == (1, 3, 24, 24)
    with pytest.raises(ValueError, match="img_size must be a positive integer"):
        load_classifier("resnet18", img_size=0)


def test_timm_augmentation_is_random_and_no_augment_is_the_eval_transform():
    model = load_classifier("resnet18", num_classes=2, img_size=16)
    torch.manual_seed(0)
    pixels = torch.randint(0, 255, (40, 40, 3), dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels)
    train, evaluation = train_eval_transforms(model)
    assert not torch.equal(train([image]), train([image]))  # random-resized crop, flip, colour jitter
    assert torch.equal(evaluation([image]), evaluation([image]))
    expected = timm.data.create_transform(**{**timm.data.resolve_data_config({}, model=model)})(image)
    assert torch.equal(evaluation([image])[0], expected)
    train_off, evaluation_off = train_eval_transforms(model, augment=False)
    assert torch.equal(train_off([image]), evaluation([image])) and torch.equal(evaluation_off([image])[0], expected)
    assert torch.equal(image_transform_for(model)([image])[0], expected)


def test_transformers_transforms_use_the_processor_size_and_statistics(tmp_path):
    folder = tiny_vit_folder(tmp_path / "vit", image_size=16)
    model = load_classifier(str(folder), num_classes=2, class_names=["cat", "dog"])
    image = Image.new("RGB", (16, 16), (255, 0, 128))
    train, evaluation = train_eval_transforms(model, str(folder))
    pixels = evaluation([image])[0]
    mean, std = torch.tensor([0.5, 0.25, 0.5]), torch.tensor([0.5, 0.5, 0.25])
    expected = (torch.tensor([255, 0, 128]) / 255.0 - mean) / std
    assert torch.allclose(pixels[:, 5, 5], expected, atol=1e-6)
    assert train([image]).shape == (1, 3, 16, 16)
    assert train_eval_transforms(model, str(folder), image_size=8)[1]([image]).shape == (1, 3, 8, 8)
    # the processor itself, as pipeline() applies it
    assert torch.allclose(image_transform_for(model, str(folder))([image])[0], pixels, atol=1e-6)


def test_class_names_reach_timm_and_transformers_models(tmp_path):
    timm_model = load_classifier("simple_convnet", class_names=["cat", "dog", "bird"])
    assert timm_model.num_classes == 3 and timm_model.pretrained_cfg["label_names"] == ["cat", "dog", "bird"]
    assert timm_model.pretrained_cfg["num_classes"] == 3  # else timm's save_for_hf drops the names
    folder = tiny_vit_folder(tmp_path / "vit", num_labels=5)
    model = load_classifier(str(folder), num_classes=2, class_names=["cat", "dog"])
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.label2id == {"cat": 0, "dog": 1}
    assert model.classifier.out_features == 2
    set_class_names(model, ["tabby", "poodle"])
    assert model.config.id2label == {0: "tabby", 1: "poodle"}
    with pytest.raises(ValueError, match="3 class names for a model with 2 classes"):
        set_class_names(model, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        set_class_names(timm_model, ["a", "a", "b"])
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        load_classifier("simple_convnet", num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="built for 16x16 images"):
        load_classifier(str(folder), img_size=32)


def test_a_repo_that_needs_custom_code_is_refused_without_a_prompt(tmp_path, monkeypatch):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_secret_vit", "architectures": ["MySecretViT"],
        "auto_map": {"AutoConfig": "configuration_x.XConfig",
                     "AutoModelForImageClassification": "modeling_x.XForImageClassification"}}))
    (folder / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run remote code"))
    with pytest.raises(ValueError, match="needs custom code.*never runs code from a model repo"):
        load_classifier(str(folder), num_classes=2)


def test_a_timm_saved_repo_loads_with_timm_from_a_folder_and_by_name(tmp_path, monkeypatch):
    from hub_cache import offline_cache, publish

    folder = tmp_path / "saved"
    original = timm_saved_folder(folder, num_classes=4)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = original(batch)
    loaded = load_classifier(str(folder)).eval()  # a plain folder, no "local-dir:"
    assert type(loaded).__name__ == "ResNet" and loaded.num_classes == 4
    with torch.no_grad():
        assert torch.allclose(loaded(batch), expected, atol=1e-5)
    publish(offline_cache(monkeypatch, tmp_path), folder, "some-org/resnet18-birds")
    by_name = load_classifier("some-org/resnet18-birds").eval()  # not hf-hub:, not timm/: TimmWrapper would fail
    assert type(by_name).__name__ == "ResNet"
    with torch.no_grad():
        assert torch.allclose(by_name(batch), expected, atol=1e-5)
    new_head = load_classifier("some-org/resnet18-birds", num_classes=2, class_names=["a", "b"])
    assert new_head.num_classes == 2 and new_head.pretrained_cfg["label_names"] == ["a", "b"]
    assert torch.equal(new_head.conv1.weight, original.conv1.weight)  # the backbone's weights, a new head
    with pytest.raises(FileNotFoundError, match="offline mode is on"):
        load_classifier("some-org/not-in-the-cache")


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a timm model name"):
        load_classifier("resnet_eighteen")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_classifier(str(tmp_path / "empty"))


def test_image_transform_for_is_one_implementation():
    import hf_debias.loading as loading

    assert not hasattr(loading, "image_transform_for")  # it lives in hf_debias.data.transforms only


def test_load_classifier_finds_simple_convnet_in_a_fresh_process():
    """``load_classifier('simple_convnet')`` used to fail as 'neither a timm model name' unless something else had
    imported ``hf_debias.models`` first (the default model of ``hf-debias train``)."""
    import subprocess
    import sys

    code = ("from hf_debias.loading import load_classifier\n"
            "print(load_classifier('simple_convnet', num_classes=3).num_classes)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "3"


def test_image_size_is_refused_only_for_transformers_models_with_position_embeddings(tmp_path):
    """A ConvNext's config.image_size (224) is a default, not a limit: --image_size used to be refused for it."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    from hf_debias.loading import load_classifier

    ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                  num_labels=3)).save_pretrained(tmp_path / "cnx")
    model = load_classifier(str(tmp_path / "cnx"), num_classes=2, img_size=12)
    assert model(torch.zeros(1, 3, 12, 12)).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="position embeddings"):
        load_classifier(str(tiny_vit_folder(tmp_path / "vit", image_size=16)), num_classes=2, img_size=32)
