"""Several corrections at once (``ComposedConfig``; issue 15 item 4): the penalties summed and logged by part,
the combined flags, the up-front checks naming the parts, one ``debias_config.json`` with one CAV folder per part
(saved, hashed, loaded; hostile edits refused), the model card, a DebiasTrainer run, the multi-artifact builder and
the two-artifact benchmark's smoke run. Offline, CPU, tiny models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch

from hf_debias import (CAV, AClArCConfig, ComposedConfig, DebiasModel, EnDConfig, PClArCConfig,
                       RRClArCConfig, RRRConfig, available_methods, get_debias_model, load_model)
from hf_debias.data import ArtifactSpec, controlled_artifact_arrays
from hf_debias.data.artifacts import artifact_names, build_controlled_artifact
from hf_debias.hooks import LayerHook
from hf_debias.layers import resolve_layer
from hf_debias.methods import ComposedMethod, method_class_for
from hf_debias.trainer import DebiasTrainer, DebiasTrainingArguments

ROOT = Path(__file__).resolve().parent.parent
X = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
B = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # EnD's portable-default note, RR-ClArC's linear-head note
        yield


def convnet(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("simple_convnet", num_classes=3)


def channels(layer: str) -> int:
    model = convnet()
    hook = LayerHook(resolve_layer(model, layer))
    model(X[:2])
    return hook.activation.shape[1]


def cav(concept: str | None, seed: int, layer: str = "stages.3") -> CAV:
    vector = torch.randn(channels(layer), generator=torch.Generator().manual_seed(seed))
    return CAV(vector, concept=concept, layer=layer, pooling="mean", concept_mean=1.5, clean_mean=-0.5,
               num_samples=40, num_concept_samples=20, quality={"auc": 0.9})


RULER, TAG = cav("ruler", 1), cav("hospital tag", 2)


def rr(c: CAV = RULER, **kwargs) -> RRClArCConfig:
    return RRClArCConfig(cav=c, **{"lamb": 10.0, "freeze": "none", "gradient_target": "mean_log_prob", **kwargs})


def three_parts():
    return [EnDConfig(alpha=2.0, beta=0.5, normalize_forward="never"), rr(RULER), rr(TAG, lamb=100.0)]


def logits(model, x=X):
    with torch.no_grad():
        return model(x).logits if isinstance(model, DebiasModel) else model(x)


# ====================================================================== the composed method
def test_the_penalty_is_the_sum_of_the_parts_and_each_term_is_logged_by_name():
    composed = get_debias_model(convnet(), three_parts()).train()
    out = composed(X, labels=Y, bias_labels=B)
    assert isinstance(composed.debias_config, ComposedConfig) and composed.method.names == [
        "end", "rrclarc_ruler", "rrclarc_hospital_tag"]
    singles, models = {}, {}
    for name, part in zip(composed.method.names, three_parts()):
        models[name] = get_debias_model(convnet(), part).train()
        singles[name] = models[name](X, labels=Y, bias_labels=B)
    assert set(out.penalty_terms) == {
        "end/weighted_penalty", "end/end_r_ortho", "end/end_r_par", "rrclarc_ruler/weighted_penalty",
        "rrclarc_ruler/rrclarc_penalty", "rrclarc_hospital_tag/weighted_penalty", "rrclarc_hospital_tag/rrclarc_penalty"}
    for name, single in singles.items():
        torch.testing.assert_close(out.penalty_terms[f"{name}/weighted_penalty"], single.penalty.detach())
        for key, value in single.penalty_terms.items():
            torch.testing.assert_close(out.penalty_terms[f"{name}/{key}"], value)
    total = sum(single.penalty for single in singles.values())
    torch.testing.assert_close(out.penalty, total)
    torch.testing.assert_close(out.loss, out.ce_loss + total)
    assert out.penalty_terms["rrclarc_hospital_tag/rrclarc_penalty"] > 0
    # the gradient is the summed loss's: cross-entropy plus each part's penalty, part by part
    out.loss.backward()
    expected = torch.zeros_like(composed.model.fc.weight)
    for index, (name, single) in enumerate(singles.items()):
        target = single.loss if index == 0 else single.penalty  # the cross-entropy once
        expected += torch.autograd.grad(target, models[name].model.fc.weight)[0]
    torch.testing.assert_close(composed.model.fc.weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert (singles["rrclarc_hospital_tag"].penalty > 0) and expected.abs().sum() > 0


def test_part_names_fall_back_to_the_index_and_the_flags_combine():
    unnamed = get_debias_model(convnet(), [rr(cav(None, 3)), rr(cav(None, 4))]).train()
    assert unnamed.method.names == ["rrclarc_0", "rrclarc_1"]
    same_concept = ComposedConfig(corrections=[rr(cav("x", 3)), rr(cav("x", 4))])
    assert same_concept.part_names() == ["rrclarc_0", "rrclarc_1"]
    klass = method_class_for(ComposedConfig(corrections=three_parts()))
    assert issubclass(klass, ComposedMethod) and klass.needs_bias_labels and not klass.needs_masks
    assert not klass.compile_safe  # RR-ClArC's double backward
    only_end = method_class_for(ComposedConfig(corrections=[EnDConfig(), PClArCConfig(cav=RULER)]))
    assert only_end.needs_bias_labels and only_end.compile_safe and not only_end.needs_masks
    masked = method_class_for(ComposedConfig(corrections=[rr(), RRRConfig(lamb=1.0, freeze="none")]))
    assert masked.needs_masks and not masked.needs_bias_labels
    assert "composed" not in available_methods() and "end" in available_methods()
    plain = get_debias_model(convnet(), [rr(), rr(TAG)])
    assert not plain.method.alters_forward
    projected = get_debias_model(convnet(), [PClArCConfig(cav=RULER), rr(TAG)])
    assert projected.method.alters_forward and projected.method.layer.spec == "stages.3"
    with pytest.warns(UserWarning, match=r"corrections\[0\] \(pclarc\): pclarc changed the forward pass"):
        projected.unload()


def test_a_list_of_one_is_that_config_and_a_single_model_is_unchanged():
    single = get_debias_model(convnet(), [rr()])
    assert type(single.debias_config) is RRClArCConfig and type(single.method).__name__ == "RRClArC"
    assert method_class_for(rr()) is type(single.method)


def test_unload_restores_every_hook_and_every_frozen_flag():
    model = convnet().eval()
    before = logits(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    composed = get_debias_model(model, [rr(freeze="conv_norm"), rr(TAG, freeze="conv_norm"),
                                        PClArCConfig(cav=cav("c", 5, "stages.2"))])
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("stages"))
    assert not torch.allclose(logits(composed.eval()), before)  # P-ClArC projects at stages.2
    with pytest.warns(UserWarning, match="changed the forward pass"):
        plain = composed.unload()
    assert {name: p.requires_grad for name, p in plain.named_parameters()} == flags
    torch.testing.assert_close(logits(plain.eval()), before, rtol=0, atol=0)


# ====================================================================== checks up front
@pytest.mark.parametrize(("parts", "message"), [
    ([], r"corrections is empty"),
    ([EnDConfig(), EnDConfig(alpha=3.0)], r"corrections\[0\] \(end\) and corrections\[1\] \(end\) are both EnD.*one "
                                          "bias_labels column"),
    ([rr(freeze="conv_norm"), rr(TAG, freeze="none")], r"freeze differently: corrections\[0\] \(rrclarc\) "
                                                      r"freeze='conv_norm', corrections\[1\] \(rrclarc\) freeze='none'"),
    ([rr(), rr()], r"corrections\[0\] \(rrclarc\) and corrections\[1\] \(rrclarc\) are identical"),
    ([rr(RULER), rr(cav("ruler", 1))], r"are identical"),  # equal vectors and metadata
    ([RRRConfig(mask_column="a", freeze="none"), RRRConfig(mask_column="b", freeze="none", lamb=2.0)],
     r"different mask columns.*same mask_column"),
    ([rr(), {"debias_method": "fancy", "layer": None}], r"corrections\[1\]: debias_method='fancy' is not a known "
                                                        r"method; choose one of: \['aclarc', 'end'"),
    ([rr(), ComposedConfig(corrections=[rr(TAG), EnDConfig()])], r"corrections\[1\] is itself a composed correction"),
    ([rr(), {"debias_method": "composed", "corrections": []}], r"corrections\[1\] is itself a composed correction"),
    ([rr(), "end"], r"corrections\[1\] must be a debias config"),
])
def test_conflicting_configs_are_refused_naming_the_parts(parts, message):
    with pytest.raises(ValueError, match=message):
        ComposedConfig(corrections=parts)
    if parts:
        with pytest.raises(ValueError, match=message):
            get_debias_model(convnet(), parts)


def test_conflicts_on_the_model_are_refused_and_leave_the_model_untouched():
    model = convnet().eval()
    before = logits(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    cases = [
        ([PClArCConfig(cav=RULER), AClArCConfig(cav=TAG, freeze="none")],
         r"corrections\[0\] \(pclarc\) and corrections\[1\] \(aclarc\) both change the activation at 'stages.3'.*order"),
        ([EnDConfig(layer="stages.3", normalize_forward="always"), PClArCConfig(cav=RULER)],
         r"corrections\[0\] \(end\) and corrections\[1\] \(pclarc\) both change the activation at 'stages.3'"),
        ([EnDConfig(normalize_forward="never"), rr(freeze="conv_norm"), rr(TAG, freeze="conv_norm")],
         r"corrections\[0\] \(end\) at 'fc:input' would train nothing: the freeze='conv_norm' of corrections\[1\] "
         r"\(rrclarc\), corrections\[2\] \(rrclarc\).*freeze='none'"),
        ([rr(freeze="before_layer"), rr(cav("c", 6, "stages.2"), freeze="before_layer")],
         r"freeze differently.*at 'stages.3'.*at 'stages.2'.*the same layer"),
        ([rr(), rr(cav("x", 7, "stages.2"), allow_cav_mismatch=False, layer="stages.3")],
         r"corrections\[1\] \(rrclarc\): The CAV for 'x' does not match this model"),
    ]
    for parts, message in cases:
        with pytest.raises(ValueError, match=message):
            get_debias_model(model, parts)
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert not model._forward_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        torch.testing.assert_close(logits(model), before, rtol=0, atol=0)
    # a P-ClArC projection and RR-ClArC reading the same layer do not conflict: one changes it, one reads it
    get_debias_model(model, [PClArCConfig(cav=RULER), rr(TAG)]).unload()
    # EnD with one freeze policy that leaves its features trainable is fine
    get_debias_model(convnet(), [EnDConfig(normalize_forward="never"), rr(freeze="none")])


# ====================================================================== one debias_config.json, one CAV per part
def saved_composed(folder: Path, parts=None) -> tuple[DebiasModel, torch.Tensor]:
    model = get_debias_model(convnet(), parts or three_parts()).eval()
    with torch.no_grad():
        model.model.fc.weight.add_(1.0)
    expected = logits(model)
    model.save_pretrained(folder)
    return model, expected


def test_saved_as_one_config_with_a_cav_file_per_part_recorded_and_loaded(tmp_path):
    model, expected = saved_composed(tmp_path / "saved")
    folder = tmp_path / "saved"
    data = json.loads((folder / "debias_config.json").read_text())
    assert data["debias_method"] == "composed" and [part["debias_method"] for part in data["corrections"]] == [
        "end", "rrclarc", "rrclarc"]
    assert [part.get("cav") for part in data["corrections"]] == [None, "cav_1", "cav_2"]
    assert all(part["base_model_name_or_path"] == "simple_convnet" for part in data["corrections"])
    assert {"cav_1/cav.safetensors", "cav_2/cav.safetensors", "cav_1/cav_config.json", "cav_2/cav_config.json",
            "model.safetensors", "config.json"} == set(data["hf_debias_files"])
    assert not (folder / "cav").exists()
    loaded = load_model(folder)
    assert isinstance(loaded.debias_config, ComposedConfig) and loaded.method.names == model.method.names
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)
    for part, cav_ in zip(loaded.debias_config.corrections[1:], (RULER, TAG)):
        assert torch.equal(part.load_cav().vector, cav_.vector) and part.load_cav().concept == cav_.concept
    # plain timm loads it too (no part changes the forward pass), with the same logits
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    torch.testing.assert_close(logits(plain), expected, rtol=0, atol=1e-6)
    # the card lists every part, with each CAV's folder
    card = (folder / "README.md").read_text()
    assert "Composed correction (EnD (Entangling and Disentangling) + RR-ClArC (Right Reason ClArC) + RR-ClArC" in card
    for text in ("### 0. EnD (Entangling and Disentangling) (`end`)", "### 1. RR-ClArC (Right Reason ClArC) "
                 "(`rrclarc_ruler`)", "### 2. RR-ClArC (Right Reason ClArC) (`rrclarc_hospital_tag`)",
                 "Its CAV is in `cav_1/` of this repo: concept **ruler**", "concept **hospital tag**",
                 "| `lamb` | `100.0` |", "| `alpha` | `2.0` |", "`mean` pooling"):
        assert text in card, text
    assert "- rrclarc" in card and "- end" in card  # tags


def test_resuming_compares_a_composition_part_by_part_and_each_cav_by_content(tmp_path):
    from hf_debias.trainer import debias_config_differences

    saved_composed(tmp_path / "saved")
    saved = load_model(tmp_path / "saved").debias_config  # parts read back from disk (CAVs as cav_<index>/)
    assert debias_config_differences(saved, ComposedConfig(corrections=three_parts())) == []
    other = [EnDConfig(alpha=3.0, beta=0.5, normalize_forward="never"), rr(RULER), rr(cav("tag", 9), lamb=100.0)]
    differences = debias_config_differences(saved, ComposedConfig(corrections=other))
    assert differences[0] == "corrections[0] (end) alpha: checkpoint 2.0, this run 3.0"
    assert len(differences) == 2 and differences[1].startswith("corrections[2] (rrclarc) cav: the checkpoint's CAV")
    assert "vector" in differences[1]
    fewer = debias_config_differences(saved, ComposedConfig(corrections=three_parts()[:2]))
    assert fewer == ["corrections: checkpoint has 3 parts (end, rrclarc, rrclarc), this run 2 (end, rrclarc)"]


def test_a_forward_changing_part_guards_the_repo_and_a_later_save_removes_the_part_folders(tmp_path):
    folder = tmp_path / "saved"
    _, expected = saved_composed(folder, [PClArCConfig(cav=cav("c", 5, "stages.2")), rr(TAG)])
    config = json.loads((folder / "config.json").read_text())
    assert "P-ClArC (Projective ClArC) in this composed correction changes the forward pass" in config["architecture"]
    with pytest.raises(Exception, match="load it with hf_debias.load_model"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    torch.testing.assert_close(logits(load_model(folder)), expected, rtol=0, atol=1e-6)
    (folder / "notes.txt").write_text("mine")
    get_debias_model(convnet(), rr()).save_pretrained(folder)  # a single correction into the same folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "cav", "config.json", "debias_config.json",
                                                        "model.safetensors", "notes.txt"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d, f: d["corrections"][1].update(debias_method="fancy"),
     r"corrections\[1\]: debias_method='fancy' is not a known method"),
    (lambda d, f: d["corrections"].append({"debias_method": "composed", "layer": None, "corrections": []}),
     r"corrections\[3\] is itself a composed correction"),
    (lambda d, f: d["corrections"][2].update(cav="../outside"),
     r"corrections\[2\] \(rrclarc\): field 'cav'.*not a safe relative folder name"),
    (lambda d, f: d["corrections"][2].update(cav="/etc"), r"corrections\[2\] \(rrclarc\): field 'cav'"),
    (lambda d, f: d["corrections"][2].update(cav="cav_9"), r"corrections\[2\] \(rrclarc\): field 'cav' is 'cav_9', "
                                                           "which is no folder inside"),
    (lambda d, f: d["corrections"][1].pop("layer"), r"lacks the fields \['corrections\[1\].layer'\]"),
    (lambda d, f: d.pop("corrections"), r"lacks the fields \['corrections'\]"),
    (lambda d, f: d.update(corrections=d["corrections"][:1]), r"corrections holds one config \(end\)"),
    (lambda d, f: d["corrections"][1].update(lamb="5"), r"corrections\[1\]: lamb must be a number"),
    (lambda d, f: d["corrections"].append(dict(d["corrections"][2])), r"corrections\[2\] \(rrclarc\) and "
                                                                       r"corrections\[3\] \(rrclarc\) are identical"),
])
def test_hand_edited_composed_configs_are_refused_with_the_part_named(tmp_path, edit, message):
    saved_composed(tmp_path / "saved")
    path = tmp_path / "saved" / "debias_config.json"
    data = json.loads(path.read_text())
    data.pop("hf_debias_files")  # the record would refuse the edit first: test the config's own checks
    edit(data, tmp_path / "saved")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"debias_config.json.*{message}"):
        load_model(tmp_path / "saved")


def test_a_part_cav_that_is_missing_changed_or_a_symlink_out_is_refused(tmp_path):
    saved_composed(tmp_path / "a")
    saved_composed(tmp_path / "b", [EnDConfig(normalize_forward="never"), rr(RULER), rr(cav("other", 9))])
    shutil.copyfile(tmp_path / "b" / "cav_2" / "cav.safetensors", tmp_path / "a" / "cav_2" / "cav.safetensors")
    with pytest.raises(ValueError, match=r"changed \['cav_2/cav.safetensors'\].*Nothing was loaded"):
        load_model(tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "cav_2")
    with pytest.raises(ValueError, match=r"missing \['cav_2/cav.safetensors', 'cav_2/cav_config.json'\]"):
        load_model(tmp_path / "a")
    # without the record (an older save, or a hand-made folder) the part's missing CAV is still named
    path = tmp_path / "a" / "debias_config.json"
    data = json.loads(path.read_text())
    data.pop("hf_debias_files")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"corrections\[2\] \(rrclarc\): field 'cav' is 'cav_2', which is no folder"):
        load_model(tmp_path / "a")
    (tmp_path / "a" / "cav_2").symlink_to(tmp_path / "b" / "cav_2")
    with pytest.raises(ValueError, match=r"corrections\[2\] \(rrclarc\):.*outside"):
        load_model(tmp_path / "a")
    # a part's CAV of another model's layer is refused by that part's own check, named
    data["corrections"][2]["layer"] = "stages.2"
    (tmp_path / "a" / "cav_2").unlink()
    shutil.copytree(tmp_path / "b" / "cav_2", tmp_path / "a" / "cav_2")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"corrections\[2\] \(rrclarc\): The CAV for 'other' does not match"):
        load_model(tmp_path / "a")


# ====================================================================== the Trainer, unchanged
def test_debias_trainer_trains_a_composed_model_and_logs_each_named_term(tmp_path):
    rng = np.random.default_rng(0)
    masks = np.zeros((32, 16, 16), dtype=np.float32)
    masks[:, -4:, -4:] = 1.0
    dataset = datasets.Dataset.from_dict({
        "pixel_values": rng.standard_normal((32, 3, 16, 16)).astype(np.float32), "labels": rng.integers(0, 3, 32),
        "bias_labels": rng.integers(0, 2, 32), "region": masks}).with_format("torch")
    config = ComposedConfig(corrections=[EnDConfig(normalize_forward="never"), rr(),
                                         RRRConfig(lamb=5.0, mask_column="region", freeze="none")])
    args = DebiasTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4,
                                   learning_rate=1e-3, logging_steps=2, save_strategy="no", report_to=[],
                                   use_cpu=True, seed=0, disable_tqdm=True)
    trainer = DebiasTrainer(model=convnet(), args=args, train_dataset=dataset, debias_config=config)
    assert isinstance(trainer.model.debias_config, ComposedConfig) and trainer.mask_column == "region"
    before = trainer.model.model.fc.weight.detach().clone()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "penalty" in entry]
    assert len(logged) == 2
    for entry in logged:
        parts = [entry[f"{name}/weighted_penalty"] for name in ("end", "rrclarc", "rrr")]
        assert entry["penalty"] == pytest.approx(sum(parts), rel=1e-5)
        assert entry["end/end_r_ortho"] > 0 and entry["rrclarc/rrclarc_penalty"] > 0 and entry["rrr/rrr_penalty"] > 0
        assert entry["rrr/weighted_penalty"] == pytest.approx(5.0 * entry["rrr/rrr_penalty"], rel=1e-5)
    assert not torch.equal(before, trainer.model.model.fc.weight)
    with pytest.raises(ValueError, match=r"needs a mask per image.*no column 'region'"):
        DebiasTrainer(model=convnet(), args=args, train_dataset=dataset.remove_columns("region"), debias_config=config)


# ====================================================================== several artifacts in the data
# ====================================================================== the CLI: --debias end,rrclarc --cav a,b
def test_cli_composes_methods_and_one_part_per_cav_and_refuses_what_does_not_fit(tmp_path, capsys):
    from hf_debias.cli import main

    RULER.save_pretrained(tmp_path / "ruler")
    TAG.save_pretrained(tmp_path / "tag")
    out = tmp_path / "out"
    assert main(["train", "--dataset", "colour-digits", "--colour_digits_train_size", "64", "--max_eval_samples",
                 "32", "--max_steps", "2", "--per_device_train_batch_size", "16", "--use_cpu", "true",
                 "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1",
                 "--debias", "end,rrclarc", "--cav", f"{tmp_path / 'ruler'},{tmp_path / 'tag'}", "--freeze", "none",
                 "--end_alpha", "2", "--end_normalize_forward", "never", "--rrclarc_lamb", "10",
                 "--output_dir", str(out)]) == 0
    data = json.loads((out / "debias_config.json").read_text())
    assert [part["debias_method"] for part in data["corrections"]] == ["end", "rrclarc", "rrclarc"]
    assert data["corrections"][0]["alpha"] == 2.0 and {part.get("lamb") for part in data["corrections"][1:]} == {10.0}
    loaded = load_model(out)
    for part, expected in zip(loaded.debias_config.corrections[1:], (RULER, TAG)):  # each CAV in its own part
        assert torch.equal(part.load_cav().vector, expected.vector)
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    terms = {key for entry in logs for key in entry if "/" in key}
    assert {"end/end_r_ortho", "rrclarc_ruler/rrclarc_penalty", "rrclarc_hospital_tag/rrclarc_penalty"} <= terms, terms
    capsys.readouterr()
    for bad, message in ((["--debias", "end,none"], "'none' cannot be combined"),
                         (["--debias", "end,rrclarc,pclarc", "--cav", "a,b,c"], "names 3 CAVs"),
                         (["--debias", "end,rrclarc", "--cav", str(tmp_path / "ruler"), "--rrr_lamb", "3"],
                          "does not use --rrr_lamb")):
        assert main(["train", "--output_dir", str(tmp_path / "bad"), *bad]) == 2
        assert message in capsys.readouterr().err


def test_several_artifacts_each_in_its_own_class_with_their_own_flags_and_masks():
    pairs = [(ArtifactSpec("patch"), 0), ("hidden_bits", 3)]
    splits = controlled_artifact_arrays(artifacts=pairs, n_train=400, n_validation=100, n_test=50, seed=1)
    assert artifact_names(pairs) == ["patch", "hidden_bits"]
    assert artifact_names([("patch", 0), (ArtifactSpec("patch", corner="top_left"), 1)]) == ["patch_0", "patch_1"]
    assert list(splits) == ["train", "validation", "test_clean", "test_attacked", "test_attacked_patch",
                            "test_attacked_hidden_bits"]
    train = splits["train"]
    for name, target in (("patch", 0), ("hidden_bits", 3)):
        flags = train.artifact_flags[name]
        assert set(train.labels[flags == 1]) == {target}
        assert flags.sum() == round(0.8 * (train.labels == target).sum())
        assert (train.artifact_masks[name].any(axis=(1, 2)) == flags.astype(bool)).all()
    assert train.artifact_masks["patch"][train.artifact_flags["patch"] == 1].sum(axis=(1, 2)).tolist() == [16] * int(
        train.artifact_flags["patch"].sum())  # the 4-px patch
    np.testing.assert_array_equal(train.artifact, train.artifact_flags["patch"] | train.artifact_flags["hidden_bits"])
    clean = splits["test_clean"].images
    patch_only, bits_only = splits["test_attacked_patch"], splits["test_attacked_hidden_bits"]
    assert patch_only.artifact_flags["patch"].all() and not patch_only.artifact_flags["hidden_bits"].any()
    changed = (patch_only.images != clean).any(axis=-1)
    assert changed[~patch_only.artifact_masks["patch"]].sum() == 0 and changed.any()
    assert ((bits_only.images ^ clean) < 32).all() and (bits_only.images != clean).any()  # 5 low bits only
    both = splits["test_attacked"]
    assert both.artifact_flags["patch"].all() and both.artifact_flags["hidden_bits"].all()
    # one artifact given as a list draws exactly what the single call draws
    single = controlled_artifact_arrays(artifact="timestamp", target_class=3, n_train=400, n_validation=100,
                                        n_test=50, seed=1)
    listed = controlled_artifact_arrays(artifacts=[("timestamp", 3)], n_train=400, n_validation=100, n_test=50,
                                        seed=1)
    for split in single:
        for field in ("images", "labels", "artifact", "masks"):
            assert getattr(single[split], field).tobytes() == getattr(listed[split], field).tobytes()
        assert single[split].artifact_flags is None
    with pytest.raises(ValueError, match=r"either artifact= and target_class=.*not both"):
        controlled_artifact_arrays(artifact="patch", artifacts=pairs, n_train=50, n_test=20)
    with pytest.raises(ValueError, match=r"artifacts\[1\] must be an \(ArtifactSpec or kind, target_class\) pair"):
        controlled_artifact_arrays(artifacts=[("patch", 0), ("hidden_bits",)], n_train=50, n_test=20)
    with pytest.raises(ValueError, match=r"artifacts\[1\]: target_class=12 does not occur"):
        controlled_artifact_arrays(artifacts=[("patch", 0), ("hidden_bits", 12)], n_train=50, n_test=20)
    dataset = build_controlled_artifact(artifacts=pairs, n_train=60, n_validation=30, n_test=20)
    assert {"artifact_patch", "artifact_mask_hidden_bits"} <= set(dataset["train"].column_names)
    assert sum(dataset["test_attacked_patch"]["artifact_patch"]) == 20


def test_the_two_artifact_benchmark_runs_in_quick_mode(tmp_path):
    output = tmp_path / "two.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rr_clarc_two_artifacts.py"), "--quick",
                             "--threads", "1", "--output", str(output)], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(output.read_text())
    rows = data["summary"]
    assert list(rows) == ["vanilla", "λ=0 control", "RR-ClArC (patch CAV)", "RR-ClArC (hidden_bits CAV)",
                          "composed (both CAVs)"]
    for values in rows.values():
        for name in ("patch", "hidden_bits", "both"):
            assert values[f"gap_{name}"]["mean"] == pytest.approx(
                values["clean_accuracy"]["mean"] - values[f"attacked_accuracy_{name}"]["mean"])
    timing = data["step_time"]
    assert timing["composed_vs_one"] == pytest.approx(timing["composed_ms"] / timing["one_ms"])
    table = output.with_suffix(".md").read_text()
    assert "| composed (both CAVs) |" in table and "Step time: composed" in table and "Target (composed" in table
