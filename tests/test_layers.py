"""Layer addressing on timm and transformers models, wrapper prefixes, and listing with shapes."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import (ResNetConfig, ResNetForImageClassification, TimmWrapperConfig,
                          TimmWrapperForImageClassification, ViTConfig, ViTForImageClassification)

from hf_debias import find_classifier, list_layers, resolve_layer
from hf_debias.layers import format_layers


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=4)


@pytest.fixture(scope="module")
def timm_wrapper():
    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet18", num_labels=4))


def tiny_vit():
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64, num_labels=3))


def test_plain_names_and_input_suffix(resnet):
    ref = resolve_layer(resnet, "layer3")
    assert ref.name == "layer3" and ref.module is resnet.layer3 and not ref.on_input
    ref = resolve_layer(resnet, "fc:input")
    assert ref.module is resnet.fc and ref.on_input and ref.spec == "fc:input"


def test_wrapper_prefixes_are_optional_both_ways(resnet, timm_wrapper):
    assert resolve_layer(timm_wrapper, "layer3").name == "timm_model.layer3"
    assert resolve_layer(timm_wrapper, "timm_model.layer3").module is timm_wrapper.timm_model.layer3
    assert resolve_layer(resnet, "timm_model.layer3").module is resnet.layer3
    ddp_like = torch.nn.Module()
    ddp_like.module = resnet
    assert resolve_layer(ddp_like, "layer3").name == "module.layer3"
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = ddp_like
    assert resolve_layer(compiled_like, "layer3").name == "_orig_mod.module.layer3"


def test_default_bottleneck_is_the_classifier_input(resnet, timm_wrapper):
    assert find_classifier(resnet) == ("fc", resnet.fc)
    assert find_classifier(timm_wrapper)[0] == "timm_model.fc"
    vit = tiny_vit()
    assert find_classifier(vit) == ("classifier", vit.classifier)
    hf_resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                          num_labels=3))
    assert resolve_layer(hf_resnet, None).spec == "classifier:input"
    vit_timm = timm.create_model("test_vit", pretrained=False, num_classes=3)
    assert resolve_layer(vit_timm, None).spec == "head:input"


def test_unknown_layer_error_lists_close_names(resnet, timm_wrapper):
    with pytest.raises(ValueError, match=r"'layer9' not found in ResNet\. Closest valid layers: \[.*'layer1'"):
        resolve_layer(resnet, "layer9")
    with pytest.raises(ValueError, match="Closest valid layers"):
        resolve_layer(timm_wrapper, "blocks.3")
    for bad in ("", ":input", 3):
        with pytest.raises(ValueError, match="module name"):
            resolve_layer(resnet, bad)
    named = torch.nn.Module()
    named.tin = torch.nn.Linear(2, 2)  # a name made only of the letters of ":input" still resolves
    assert resolve_layer(named, "tin").module is named.tin
    with pytest.raises(ValueError, match="classifier head"):
        resolve_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), None)


def test_list_layers_reports_output_shapes_in_execution_order(resnet):
    rows = {row.name: row for row in list_layers(resnet, (3, 32, 32))}
    assert rows["layer3"].output_shape == (256, 2, 2)
    assert rows["global_pool"].output_shape == (512,)
    assert rows["fc"].output_shape == (4,)
    assert rows["layer4"].is_feature and not rows["layer4.0.conv1"].is_feature
    names = [row.name for row in list_layers(resnet, (3, 32, 32))]
    assert names.index("layer1") < names.index("layer2") < names.index("fc")
    table = format_layers(list_layers(resnet, (3, 32, 32)))
    assert "* layer3" in table and "256x2x2" in table
    assert resnet.training  # the training mode is restored


def test_list_layers_on_transformers_models(timm_wrapper):
    rows = {row.name: row for row in list_layers(timm_wrapper, (3, 32, 32))}
    assert rows["timm_model.layer4"].output_shape == (512, 1, 1)
    assert rows["timm_model.layer4"].is_feature
    vit_rows = {row.name: row for row in list_layers(tiny_vit(), (3, 32, 32))}
    assert vit_rows["vit.layers.1"].output_shape == (17, 32)
