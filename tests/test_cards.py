"""Model cards tell the truth: their "How to load" snippets run as written on the saved repo (offline Hub cache),
``pipeline`` works on every repo whose forward pass is plain and refuses the others, the card never shows group
sizes as metrics, names the TCAV sensitivity it shows, and says how much of a shortcut a correction leaves."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import warnings

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import (AutoImageProcessor, TimmWrapperConfig, TimmWrapperForImageClassification, ViTConfig,
                          ViTForImageClassification, ViTImageProcessor, pipeline)

from hf_debias import CAV, AClArCConfig, EnDConfig, ModelCardInfo, PClArCConfig, RRClArCConfig, get_debias_model
from hf_debias import load_model
from hf_debias.data.transforms import image_transform_for
from hf_debias.hub import save_cavs, save_model
from hf_debias.hub.cards import IMAGE_FILE, TCAV_NOTES, debias_model_card
from hf_debias.loading import set_class_names
from hf_debias.metrics import group_accuracy
from hub_cache import offline_cache, publish

NAMES = ["cat", "dog", "bird"]
IMAGE = Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return offline_cache(monkeypatch, tmp_path)


def timm_model():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    set_class_names(model, NAMES)
    return model


def timm_wrapper_model():
    torch.manual_seed(0)
    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=3)).eval()
    set_class_names(model, NAMES)
    return model


def vit_model():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})).eval()


def vit_processor():
    return ViTImageProcessor(size={"height": 32, "width": 32})


def random_cav(channels, layer, pooling="max"):
    vector = torch.randn(channels, generator=torch.Generator().manual_seed(1))
    return CAV(vector, concept="patch", layer=layer, pooling=pooling, concept_mean=2.0, clean_mean=-1.0,
               num_samples=40, num_concept_samples=20)


def save_and_publish(model, config, tmp_path, cache, repo_id, *, processor=None, card=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EnD's fallback note where 'train' is not exact
        corrected = get_debias_model(model, config).eval()
    folder = save_model(corrected, tmp_path / repo_id.replace("/", "--"), repo_id=repo_id, card=card,
                        image_processor=processor)
    publish(cache, folder, repo_id)
    return corrected, folder


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def run_block(block: str, index: int) -> tuple[dict, str]:
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, f"<card snippet {index}>", "exec"), namespace)
    return namespace, out.getvalue()


def predicted_label(block: str, namespace: dict, printed: str) -> str:
    """The class name a snippet predicted, read from what it printed or computed."""
    if "pipeline(" in block:
        predictions = ast.literal_eval(printed.strip())
        assert len(predictions) == 3 and predictions[0]["score"] >= predictions[-1]["score"]
        return predictions[0]["label"]
    if "AutoModelForImageClassification" in block:
        label = namespace["model"].config.id2label[int(namespace["logits"].argmax(-1))]
        assert printed.strip() == label
        return label
    top, names = namespace["top"], namespace["names"]
    assert printed.split()[0] == str(top) and 0.0 < float(printed.split()[-1]) <= 1.0
    return names[top]


# --------------------------------------------------------------------------- the card's snippets run as written
CASES = {
    "timm_rrclarc": (timm_model, lambda: RRClArCConfig(cav=random_cav(48, "layer2"), lamb=10.0), None, 4),
    "timm_wrapper_aclarc": (timm_wrapper_model, lambda: AClArCConfig(cav=random_cav(48, "timm_model.layer2")),
                            None, 3),
    "vit_rrclarc": (vit_model, lambda: RRClArCConfig(cav=random_cav(32, "vit.layers.0", "cls")), vit_processor, 3),
    "timm_portable_end": (timm_model, lambda: EnDConfig(), None, 4),
    "timm_guarded_pclarc": (timm_model, lambda: PClArCConfig(cav=random_cav(48, "layer2")), None, 1),
}


@pytest.mark.parametrize("from_folder", [False, True], ids=["as_saved", "from_folder"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_cards_how_to_load_snippets_run_offline_and_agree(tmp_path, cache, monkeypatch, case, from_folder):
    """``from_folder``: the card rendered from what the saved folder holds and the method's resolved config."""
    build, make_config, processor, num_blocks = CASES[case]
    repo_id = f"org/{case.replace('_', '-')}"
    corrected, folder = save_and_publish(build(), make_config(), tmp_path, cache, repo_id,
                                         processor=processor() if processor else None)
    if from_folder:
        library = "timm" if "architecture" in json.loads((folder / "config.json").read_text()) and \
            not case.startswith("timm_wrapper") else "transformers"
        debias_model_card(corrected.debias_config, repo_id=repo_id, library=library,
                          plain_loading=not corrected.method.alters_forward, folder=folder,
                          method_config=corrected.method.config).save(folder / "README.md")
        publish(cache, folder, repo_id)
    card = (folder / "README.md").read_text()
    blocks = python_blocks(card.split("## How to load")[1].split("## Limitations")[0])
    assert len(blocks) == num_blocks, blocks
    assert all(repo_id in block for block in blocks)
    if case.endswith("guarded_pclarc"):
        assert "Load this model with hf_debias only" in card and 'pipeline("' not in card

    run_dir = tmp_path / "user"
    run_dir.mkdir()
    IMAGE.save(run_dir / IMAGE_FILE)  # the user's image, under the name the card uses
    monkeypatch.chdir(run_dir)
    labels = [predicted_label(block, *run_block(block, i)) for i, block in enumerate(blocks)]
    assert labels[0] in NAMES and len(set(labels)) == 1, labels  # every loader predicts the same class

    # the hf_debias snippet's prediction is load_model's on the model's own preprocessing
    expected = load_model(repo_id)
    with torch.no_grad():
        assert NAMES[int(expected(image_transform_for(expected, repo_id)([IMAGE])).logits.argmax())] == labels[0]


def test_a_transformers_repo_without_an_image_processor_says_so_and_shows_no_snippet_that_cannot_run(tmp_path):
    corrected = get_debias_model(vit_model(), EnDConfig()).eval()
    folder = save_model(corrected, tmp_path / "saved", repo_id="org/no-processor")
    card = debias_model_card(corrected.debias_config, repo_id="org/no-processor", library="transformers",
                             plain_loading=True, folder=folder, method_config=corrected.method.config).text
    assert "This repo has no `preprocessor_config.json`" in card and "image_processor=" in card
    assert 'pipeline("' not in card and "AutoImageProcessor.from_pretrained" not in card
    (block,) = python_blocks(card)
    assert "image_transform_for" not in block and 'hf_debias.load_model("org/no-processor")' in block

    # a recorded Hub base model: its processor is what the snippets use
    config = corrected.debias_config
    config.base_model_name_or_path = "google/vit-base-patch16-224"
    card = debias_model_card(config, repo_id="org/no-processor", library="transformers", plain_loading=True,
                             folder=folder).text
    assert 'image_processor="google/vit-base-patch16-224"' in card
    assert 'AutoImageProcessor.from_pretrained("google/vit-base-patch16-224")' in card


NAMED = {"timm": (timm_model, lambda: random_cav(48, "layer2")),
         "timm_wrapper": (timm_wrapper_model, lambda: random_cav(48, "timm_model.layer2")),
         "vit": (vit_model, lambda: random_cav(32, "vit.layers.0", "cls"))}


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_given_its_folder_the_card_names_the_groups_by_the_class_names_saved_with_the_model(tmp_path, kind):
    build, make_cav = NAMED[kind]
    corrected = get_debias_model(build(), RRClArCConfig(cav=make_cav()))
    folder = save_model(corrected, tmp_path / "saved", repo_id="org/named")
    info = ModelCardInfo(metrics={"test": group_metrics()})
    card = debias_model_card(corrected.debias_config, repo_id="org/named", library="timm", plain_loading=True,
                             info=info, folder=folder).text
    assert "| test | dog (1) | 0 | 1 | conflicting | 100.0 % |" in card


def test_the_card_shows_the_config_as_the_method_resolved_it_with_its_notes(tmp_path):
    corrected = get_debias_model(timm_model(), EnDConfig()).eval()
    card = debias_model_card(corrected.debias_config, repo_id="org/end", library="timm", plain_loading=True,
                             method_config=corrected.method.config).text
    assert "| `normalize_forward` | `train` |" in card
    assert corrected.method.config.card_notes()[0] in card


# --------------------------------------------------------------------------- pipeline on every plain repo
PLAIN = {
    "rrclarc": {"timm": lambda: RRClArCConfig(cav=random_cav(48, "layer2")),
                "vit": lambda: RRClArCConfig(cav=random_cav(32, "vit.layers.0", "cls"))},
    "aclarc": {"timm": lambda: AClArCConfig(cav=random_cav(48, "layer2")),
               "vit": lambda: AClArCConfig(cav=random_cav(32, "vit.layers.0", "cls"))},
    "end_default": {"timm": lambda: EnDConfig(), "vit": lambda: EnDConfig()},
}
GUARDED = {
    "pclarc": {"timm": lambda: PClArCConfig(cav=random_cav(48, "layer2")),
               "vit": lambda: PClArCConfig(cav=random_cav(32, "vit.layers.0", "cls"))},
    "end_always": {"timm": lambda: EnDConfig(normalize_forward="always"),
                   "vit": lambda: EnDConfig(normalize_forward="always")},
}
BUILD = {"timm": (timm_model, None), "vit": (vit_model, vit_processor)}


@pytest.mark.parametrize("kind", ["timm", "vit"])
@pytest.mark.parametrize("method", sorted(PLAIN))
def test_pipeline_works_with_class_names_when_the_forward_pass_is_plain(tmp_path, cache, method, kind):
    build, processor = BUILD[kind]
    repo_id = f"org/{method}-{kind}"
    corrected, _ = save_and_publish(build(), PLAIN[method][kind](), tmp_path, cache, repo_id,
                                    processor=processor() if processor else None)
    assert not corrected.method.alters_forward
    predictions = pipeline("image-classification", model=repo_id)(IMAGE)
    assert [p["label"] for p in predictions] != [] and {p["label"] for p in predictions} == set(NAMES)
    pixel_values = AutoImageProcessor.from_pretrained(repo_id)(images=IMAGE, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = load_model(repo_id)(pixel_values).logits.softmax(-1)[0]
    expected = {NAMES[i]: float(p) for i, p in enumerate(probabilities)}
    for prediction in predictions:
        assert prediction["score"] == pytest.approx(expected[prediction["label"]], abs=1e-5)


@pytest.mark.parametrize("kind", ["timm", "vit"])
@pytest.mark.parametrize("method", sorted(GUARDED))
def test_pipeline_refuses_a_forward_changing_correction_with_a_clear_message(tmp_path, cache, method, kind):
    build, processor = BUILD[kind]
    repo_id = f"org/{method}-{kind}"
    corrected, folder = save_and_publish(build(), GUARDED[method][kind](), tmp_path, cache, repo_id,
                                         processor=processor() if processor else None)
    assert corrected.method.alters_forward
    with pytest.raises(Exception, match="load it with hf_debias.load_model") as refused:
        pipeline("image-classification", model=repo_id)
    assert "upgrade" not in str(refused.value).lower()
    assert 'pipeline("' not in (folder / "README.md").read_text()


# --------------------------------------------------------------------------- what the card says about the metrics
def group_metrics():
    predictions = np.array([0, 0, 1, 1, 2, 0, 1, 2])
    labels = np.array([0, 0, 1, 1, 2, 2, 1, 2])
    bias_labels = np.array([0, 1, 1, 0, 2, 0, 1, 2])
    metrics = group_accuracy(predictions, labels, bias_labels, aligned_bias="identity")
    return metrics


def test_group_sizes_ids_and_flags_are_not_metrics_and_groups_get_a_table_of_their_own():
    metrics = group_metrics()
    assert {"group_0_1_count", "group_0_1_aligned", "worst_group_label", "worst_group_count"} <= set(metrics)
    info = ModelCardInfo(metrics={"test": metrics}, baseline_metrics={"test": {**metrics, "group_0_1_accuracy": 0.0}},
                         class_names=NAMES, bias_names=["red", "green", "blue"])
    config = RRClArCConfig(cav=random_cav(48, "layer2"))
    card = debias_model_card(config, repo_id="org/groups", library="timm", plain_loading=True, info=info)
    main = card.text.split("Accuracy per group")[0]
    for hidden in ("count", "aligned |", "worst group label", "worst group bias", "group 0 1 accuracy"):
        assert hidden not in main, hidden
    assert "| test | worst group accuracy | 0.0 % | 0.0 % |" in main
    assert f"| test | unbiased accuracy | {100 * metrics['unbiased_accuracy']:.1f} % |" in main
    groups = card.text.split("Accuracy per group")[1].split("## How to load")[0]
    assert "| test | cat (0) | green (1) | 1 | conflicting | 0.0 % | 100.0 % |" in groups
    assert "| test | bird (2) | red (0) | 1 | conflicting | 0.0 % | 0.0 % |" in groups
    assert groups.count("| test |") == 6
    metric_types = {result.metric_type for result in card.data.eval_results}
    assert metric_types == {"accuracy", "unbiased_accuracy", "worst_group_accuracy", "bias_aligned_accuracy",
                            "bias_conflicting_accuracy", "bias_gap"}


@pytest.mark.parametrize("given", [["tcav_pooled_sensitivity"], ["tcav_score", "tcav_position_sensitivity"],
                                   ["tcav_score", "tcav_pooled_sensitivity", "tcav_position_sensitivity"]])
def test_the_card_explains_exactly_the_tcav_metrics_it_shows(given):
    info = ModelCardInfo(metrics={"test": {"accuracy": 0.9, **{key: 0.1 for key in given}}})
    text = debias_model_card(RRClArCConfig(cav=random_cav(48, "layer2")), repo_id="org/tcav", library="timm",
                             plain_loading=True, info=info).text
    for key, note in TCAV_NOTES.items():
        assert (note in text) == (key in given), key
    if "tcav_position_sensitivity" in given:
        assert "`mean_tcav_sensitivity`" in text and "not comparable" in text


@pytest.mark.parametrize("layout", ["one_split", "split_pair"])
def test_clean_and_attacked_accuracy_are_shown_and_a_remaining_shortcut_is_a_limitation(layout):
    def splits(clean, attacked):
        if layout == "one_split":
            return {"validation": {"clean_accuracy": clean, "attacked_accuracy": attacked}}
        return {"validation_clean": {"accuracy": clean}, "validation_attacked": {"accuracy": attacked}}

    config = RRClArCConfig(cav=random_cav(48, "layer2"))
    info = ModelCardInfo(metrics=splits(0.795, 0.584), baseline_metrics=splits(0.782, 0.284))
    text = debias_model_card(config, repo_id="org/short", library="timm", plain_loading=True, info=info).text
    assert "| validation | 79.5 % | 58.4 % | 21.1 pts | 78.2 % / 28.4 % (49.8 pts) |" in text
    limitations = text.split("## Limitations")[1]
    assert ("On validation, the correction leaves 21.1 points of the shortcut: attacked accuracy\n  58.4 % against "
            "79.5 % clean (before the correction: 28.4 % against\n  78.2 %).") in limitations

    info = ModelCardInfo(metrics=splits(0.779, 0.769))  # 1.0 point: within SHORTCUT_TOLERANCE
    text = debias_model_card(config, repo_id="org/short", library="timm", plain_loading=True, info=info).text
    assert "| validation | 77.9 % | 76.9 % | 1.0 pts |" in text
    assert "leaves" not in text.split("## Limitations")[1]


# --------------------------------------------------------------------------- CAVs: the AUC with its count
def test_cav_evaluate_records_the_held_out_counts_and_warns_when_they_are_too_few():
    cav = random_cav(4, "layer2")
    activations = torch.stack([cav.vector * s for s in (3.0, 2.0, 1.0, -1.0, -2.0, -3.0)])
    with pytest.warns(UserWarning, match="rests on 3 held-out images with the concept and 3 without"):
        assert cav.evaluate(activations, [1, 1, 1, 0, 0, 0]) == 1.0
    assert cav.quality == {"auc": 1.0, "held_out_with": 3, "held_out_without": 3,
                           "residual_auc": cav.quality["residual_auc"]}  # the CAV check: tests/test_vit_corrections
    assert all(part in repr(cav) for part in ("auc=1.000", "held_out_with=3,", "held_out_without=3"))
    with pytest.warns(UserWarning, match="only one concept value"):
        assert cav.evaluate(activations[:3], [1, 1, 1]) is None
    assert "auc" not in cav.quality  # the earlier figure does not survive a failed measurement


def test_the_cav_card_reports_the_auc_with_its_held_out_count(tmp_path):
    few, unmeasured = random_cav(4, "layer2"), random_cav(4, "layer2")
    few.quality = {"auc": 1.0, "held_out_with": 3, "held_out_without": 3}
    save_cavs({"few": few, "unmeasured": unmeasured}, tmp_path / "cavs", repo_id="org/cavs")
    text = (tmp_path / "cavs" / "README.md").read_text()
    assert "| auc=1.000 on 6 held-out images (3 with, 3 without); too few to mean anything |" in text
    assert "| no AUC: nothing held out |" in text

    corrected = get_debias_model(timm_model(), RRClArCConfig(cav=few)).eval()
    folder = save_model(corrected, tmp_path / "model", repo_id="org/model")
    card = ModelCard.load(folder / "README.md").text
    assert "concept detection: auc=1.000 on 6 held-out images (3 with, 3 without); too few to mean anything" \
        in " ".join(card.split())


def test_card_info_names_must_be_lists_of_strings():
    with pytest.raises(ValueError, match="class_names must be a list of names"):
        ModelCardInfo(class_names="cat dog")
    with pytest.raises(ValueError, match="bias_names must be a list of names"):
        ModelCardInfo(bias_names=[0, 1])
