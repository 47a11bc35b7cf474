"""EnDConfig: validation at construction, JSON round-trip, forward-compatible loading."""

from __future__ import annotations

import json

import pytest

from hf_debias import DebiasConfig, EnDConfig, __version__, available_methods


def test_round_trip_through_json_and_files(tmp_path):
    config = EnDConfig(layer="layer3", alpha=0.25, beta=4.0, pairing="reference", normalize_forward=True,
                       base_model_name_or_path="timm/resnet18.a1_in1k", revision="main")
    data = json.loads(config.to_json_string())
    assert data["debias_method"] == "end" and data["hf_debias_version"] == __version__
    assert DebiasConfig.from_json_string(config.to_json_string()) == config
    assert EnDConfig.from_dict(config.to_dict()) == config
    path = config.save_pretrained(tmp_path)
    assert path.name == "debias_config.json"
    assert DebiasConfig.from_pretrained(tmp_path) == config
    assert "end" in available_methods()


def test_unknown_keys_from_a_newer_version_warn_and_are_dropped():
    data = {**EnDConfig(alpha=2.0).to_dict(), "hf_debias_version": "9.0.0", "gamma": 3}
    with pytest.warns(UserWarning, match=r"Ignoring unknown end config keys \['gamma'\].*9\.0\.0"):
        config = DebiasConfig.from_dict(data)
    assert config == EnDConfig(alpha=2.0, hf_debias_version="9.0.0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
        ({"beta": float("nan")}, "beta must be a finite number >= 0"),
        ({"alpha": "1"}, "alpha must be a number"),
        ({"pairing": "pairs"}, r"pairing='pairs' is not valid; choose one of: 'all', 'reference'"),
        ({"normalize_forward": "yes"}, "normalize_forward='yes' is not valid"),
        ({"layer": ""}, "layer must be a module name"),
    ],
)
def test_invalid_values_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EnDConfig(**kwargs)


def test_unknown_method_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"debias_method='fancy' is not a known method; choose one of: \['aclarc', 'end', 'pclarc', 'rrclarc', 'rrr'\]"):
        DebiasConfig.from_dict({"debias_method": "fancy"})
    with pytest.raises(FileNotFoundError, match="debias_config.json"):
        DebiasConfig.from_pretrained(tmp_path)


def test_rrclarc_config_saves_its_cav_next_to_it_and_loads_from_anywhere(tmp_path):
    import shutil

    import torch

    from hf_debias import CAV, RRClArCConfig

    cav = CAV(torch.tensor([3.0, 4.0]), concept="ruler", layer="layer3", concept_mean=1.0, clean_mean=0.0)
    config = RRClArCConfig(cav=cav, lamb=5.0, gradient_target="class", target_class=1)
    assert config.layer == "layer3"  # taken from the CAV
    config.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "debias_config.json").read_text())
    assert saved["cav"] == "cav" and saved["lamb"] == 5.0 and saved["debias_method"] == "rrclarc"
    shutil.move(tmp_path / "a", tmp_path / "b")  # the folder is self-contained
    loaded = DebiasConfig.from_pretrained(tmp_path / "b")
    assert isinstance(loaded, RRClArCConfig) and loaded.target_class == 1
    assert torch.allclose(loaded.load_cav().vector, torch.tensor([0.6, 0.8]))
    assert loaded.load_cav().concept == "ruler"
