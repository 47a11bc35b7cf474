"""Attributions (LRP where zennit's rules cover the model, else input × gradient), artifact relevance R_bias with the
authors' mask processing (function and evaluate module) and the heatmap grid."""

import warnings

import evaluate
import matplotlib.image
import numpy as np
import pytest
import timm
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_debias import CAV, PClArCConfig, RRClArCConfig, get_debias_model
from hf_debias.attribution import attribute
from hf_debias.heatmaps import HEADER_PIXELS, save_heatmap_grid
from hf_debias.metrics import ARTIFACT_RELEVANCE_MODULE, artifact_relevance, process_artifact_masks
from hf_debias.metrics.artifact_relevance import blur_parameters


def linear_model(weight):
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    return model


def test_r_bias_of_a_linear_model_equals_the_hand_computed_value():
    # one channel, 2x2 image; logit 0 = x . W0, so input x gradient = x * W0 and LRP's flat rule (the first layer)
    # spreads the class's relevance of 1 evenly over the four pixels
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    model = linear_model(torch.tensor([[1.0, -1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 1.0]]))
    mask = torch.tensor([[[1, 0], [0, 1]]])
    attributions, used = attribute(model, x, method="input_x_gradient", labels=torch.tensor([0]))
    assert used == "input_x_gradient"
    assert torch.equal(attributions, torch.tensor([[[[1.0, -2.0], [1.5, 8.0]]]]))
    result = artifact_relevance(attributions, mask, process_masks=False)
    assert result["artifact_relevance"] == pytest.approx((1 + 8) / (1 + 2 + 1.5 + 8))
    assert result["per_image"] == pytest.approx([0.72]) and result["num_zero_heatmaps"] == 0

    lrp, used = attribute(model, x, labels=torch.tensor([0]))
    assert used == "lrp"
    assert torch.allclose(lrp, torch.full((1, 1, 2, 2), 0.25))
    assert artifact_relevance(lrp, mask, process_masks=False)["artifact_relevance"] == pytest.approx(0.5)
    # the heatmap sums the channels first: |(1 - 3)| inside of |1 - 3| + |2 + 2|
    two_channels = torch.tensor([[[[1.0, 2.0]], [[-3.0, 2.0]]]])
    assert artifact_relevance(two_channels, torch.tensor([[[1, 0]]]), process_masks=False)["artifact_relevance"] \
        == pytest.approx(2 / 6)


def masked_cnn(mask, inside=True):
    """1x1 convolution, ReLU, then a linear head whose weights are zero outside (or inside) the mask."""
    torch.manual_seed(0)
    height, width = mask.shape
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * height * width, 3))
    keep = (mask if inside else ~mask).float().expand(4, height, width).reshape(-1)
    with torch.no_grad():
        model[0].weight.abs_()  # positive evidence, so that relevance flows
        model[3].weight.mul_(keep)
    return model


@pytest.mark.parametrize("method", ["auto", "input_x_gradient"])
def test_a_model_looking_only_inside_the_mask_has_r_bias_one_and_one_ignoring_it_zero(method):
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[1:5, 7:11] = True
    x = torch.rand(6, 3, 12, 12)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    looking, used = attribute(masked_cnn(mask, inside=True), x, method=method, labels=labels)
    ignoring, _ = attribute(masked_cnn(mask, inside=False), x, method=method, labels=labels)
    assert used == ("lrp" if method == "auto" else method)
    masks = mask.expand(6, 12, 12)
    assert artifact_relevance(looking, masks, process_masks=False)["artifact_relevance"] == pytest.approx(1.0)
    assert artifact_relevance(ignoring, masks, process_masks=False)["artifact_relevance"] == pytest.approx(0, abs=1e-6)
    # the processed mask grows a little around the patch: the ignoring model's border relevance then counts
    processed = artifact_relevance(ignoring, masks)["artifact_relevance"]
    assert 0 <= processed < 0.2
    assert artifact_relevance(looking, masks)["artifact_relevance"] == pytest.approx(1.0)


def vit_hf():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64, num_labels=10))


def unit_cav(channels, layer):
    vector = torch.randn(channels, generator=torch.Generator().manual_seed(0))
    return CAV(vector / vector.norm(), concept="patch", layer=layer, clean_mean=0.0, concept_mean=1.0)


MODEL_KINDS = {
    "simple_convnet": (lambda: timm.create_model("simple_convnet", num_classes=10), "lrp"),
    "timm_resnet18": (lambda: timm.create_model("resnet18", num_classes=10), "lrp"),
    "timm_vit": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32), "input_x_gradient"),
    "transformers_vit": (vit_hf, "input_x_gradient"),
    "wrapped_rrclarc": (lambda: get_debias_model(timm.create_model("simple_convnet", num_classes=10),
                                                 RRClArCConfig(layer="stages.2", cav=unit_cav(64, "stages.2"))), "lrp"),
    "wrapped_pclarc": (lambda: get_debias_model(timm.create_model("simple_convnet", num_classes=10),
                                                PClArCConfig(layer="stages.2", cav=unit_cav(64, "stages.2"))),
                       "input_x_gradient"),
}


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_every_model_kind_gets_an_attribution_of_the_inputs_shape_and_keeps_no_gradients(kind):
    build, expected = MODEL_KINDS[kind]
    torch.manual_seed(0)
    model = build()
    model.train()
    modes = [module.training for module in model.modules()]
    next(model.parameters()).requires_grad_(False)  # a frozen parameter stays frozen, the others as they were
    flags = [parameter.requires_grad for parameter in model.parameters()]
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attributions, used = attribute(model, x, labels=torch.tensor([3, 7]), batch_size=1)
    assert used == expected
    assert attributions.shape == x.shape and attributions.dtype == torch.float32 and attributions.device.type == "cpu"
    assert torch.isfinite(attributions).all() and attributions.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.parameters())
    assert [parameter.requires_grad for parameter in model.parameters()] == flags and any(flags)
    assert [module.training for module in model.modules()] == modes
    fallback = [str(w.message) for w in caught if "LRP does not cover" in str(w.message)]
    assert bool(fallback) == (expected != "lrp")
    if kind == "wrapped_pclarc":
        assert "pclarc correction changes the forward pass" in fallback[0]
    if kind == "wrapped_rrclarc":  # RR-ClArC leaves the eval forward as it was: the plain model's relevance
        plain, _ = attribute(model.get_base_model(), x, labels=torch.tensor([3, 7]))
        assert torch.allclose(attributions, plain)


def test_input_x_gradient_explains_the_chosen_class():
    model = vit_hf().eval()
    x = torch.randn(3, 3, 32, 32)
    pixels = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(pixels).logits[:, 4].sum(), pixels)
    attributions, used = attribute(model, x, target=4, method="input_x_gradient")
    assert used == "input_x_gradient"
    assert torch.allclose(attributions, x * grad, atol=1e-6)
    per_image, _ = attribute(model, x, target=torch.tensor([4, 4, 4]), labels=torch.tensor([0, 1, 2]),
                             method="input_x_gradient")
    assert torch.equal(per_image, attributions)  # target wins over labels
    gradient, _ = attribute(model, x, target=4, method="gradient")
    assert torch.allclose(gradient, grad, atol=1e-6)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_lrp_equals_zennits_own_canonizers():
    # torchvision's ResNet (zennit's ResNetCanonizer) and the Sequential conv-BN-Tanh simple_convnet
    # (SequentialMergeBatchNorm): the fx-canonized graph must give exactly zennit's relevance
    torchvision = pytest.importorskip("torchvision")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5)
    convnet = timm.create_model("simple_convnet", num_classes=5)
    for model in (resnet, convnet):
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # statistics other than the identity, so that merging matters
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    for model, canonizer in ((resnet, ResNetCanonizer()), (convnet, SequentialMergeBatchNorm())):
        model.eval()
        weights = {key: value.clone() for key, value in model.state_dict().items()}
        ours, used = attribute(model, x, labels=labels)
        assert used == "lrp"
        with Gradient(model, EpsilonPlusFlat(canonizers=[canonizer])) as attributor:
            _, theirs = attributor(x, torch.eye(5)[labels])
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-7)
        assert all(torch.equal(weights[key], value) for key, value in model.state_dict().items())  # merges undone


def test_attribute_rejects_bad_input_clearly():
    model = linear_model(torch.ones(2, 4))
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"method='shap' is not valid.*'lrp'"):
        attribute(model, x, method="shap", labels=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"images must be .*\[N, C, H, W\].*shape \(1, 2, 2\)"):
        attribute(model, x[0], labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="Pass labels"):
        attribute(model, x)
    with pytest.raises(ValueError, match="target class 5 is out of range: the model has 2 classes"):
        attribute(model, x, target=5)
    with pytest.raises(ValueError, match="labels has 2 entries but the batch has 1"):
        attribute(model, x, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"method='lrp' cannot explain VisionTransformer: the model itself \(cls_tok"):
        attribute(timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=32), torch.ones(1, 3, 32, 32),
                  method="lrp", target=0)


def test_process_masks_binarises_blurs_and_rebinarises():
    assert blur_parameters(224, 224) == (41, 8.0)
    assert blur_parameters(32, 32) == (7, pytest.approx(8 * 32 / 224))
    point = torch.zeros(2, 9, 9)
    point[:, 4, 4] = 1.0
    point[1, 0, 0] = 0.05  # below 0.1 of the maximum: dropped by the first binarisation
    # kernel 3, sigma 1: the neighbours get exp(-1/2) = 0.61 of the centre, the diagonals 0.37 (> 0.3): a 3x3 block
    wide = process_artifact_masks(point, blur_kernel_size=3, blur_sigma=1.0)
    expected = torch.zeros(2, 9, 9, dtype=torch.float64)
    expected[:, 3:6, 3:6] = 1.0
    assert torch.equal(wide, expected)
    # sigma 0.5: the neighbours get exp(-2) = 0.14 (< 0.3): only the point stays
    narrow = process_artifact_masks(point, blur_kernel_size=3, blur_sigma=0.5)
    assert torch.equal(narrow, (point == 1).double())
    assert process_artifact_masks(torch.zeros(1, 9, 9)).sum() == 0  # an empty mask stays empty

    torchvision = pytest.importorskip("torchvision")  # the authors' pipeline at 224 px
    masks = torch.zeros(3, 224, 224)
    masks[0, 100:130, 50:90], masks[1, :10, :10], masks[2, 5:7, 200:220] = 1.0, 1.0, 0.5
    blur = torchvision.transforms.GaussianBlur(kernel_size=41, sigma=8.0)
    reference = (masks / masks.flatten(1).amax(1)[:, None, None] > 0.1).float()
    reference = blur(reference)
    reference = (reference / reference.flatten(1).amax(1)[:, None, None] > 0.3).double()
    assert torch.equal(process_artifact_masks(masks), reference)


def test_the_evaluate_module_gives_the_functions_numbers():
    generator = torch.Generator().manual_seed(0)
    attributions = torch.randn(4, 3, 16, 16, generator=generator)
    masks = torch.zeros(4, 16, 16)
    masks[:, 2:7, 3:9] = 1
    expected = artifact_relevance(attributions, masks)
    heatmaps = evaluate.load(ARTIFACT_RELEVANCE_MODULE).compute(predictions=attributions.sum(1).tolist(),
                                                                 references=masks.tolist())
    assert heatmaps["artifact_relevance"] == pytest.approx(expected["artifact_relevance"])
    assert heatmaps["per_image"] == pytest.approx(expected["per_image"])
    full = evaluate.load(ARTIFACT_RELEVANCE_MODULE, "attributions").compute(
        predictions=attributions.tolist(), references=masks.tolist(), process_masks=False)
    assert full["artifact_relevance"] == pytest.approx(
        artifact_relevance(attributions, masks, process_masks=False)["artifact_relevance"])


def test_artifact_relevance_validates_and_marks_zero_heatmaps_nan():
    heatmaps = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])  # one [H, W] mask for every image
    with pytest.warns(UserWarning, match="1 of 2 heatmaps are zero everywhere"):
        result = artifact_relevance(heatmaps, mask, process_masks=False)
    assert result["artifact_relevance"] == pytest.approx(0.25) and result["num_zero_heatmaps"] == 1
    assert np.isnan(result["per_image"][1])
    assert artifact_relevance(heatmaps[:1], torch.tensor([[[True, False]]]), process_masks=False)["per_image"] \
        == pytest.approx([0.25])  # bool masks work as 0 / 1
    with pytest.raises(ValueError, match=r"attributions must be .*\[N, C, H, W\].*got shape \(2,\)"):
        artifact_relevance(torch.ones(2), mask)
    with pytest.raises(ValueError, match=r"masks must be shaped \[N, H, W\].*\[2, 1, 2\], got \(2, 2, 1\)"):
        artifact_relevance(heatmaps, torch.ones(2, 2, 1))
    with pytest.raises(ValueError, match="masks must be finite and >= 0"):
        artifact_relevance(heatmaps, -mask)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]; got values up to 255"):
        artifact_relevance(heatmaps, mask * 255, process_masks=False)
    with pytest.raises(ValueError, match="attributions contain NaN"):
        artifact_relevance(heatmaps * float("nan"), mask)
    with pytest.raises(ValueError, match="blur_kernel_size must be an odd integer"):
        artifact_relevance(heatmaps, mask, blur_kernel_size=4)


def test_heatmap_grid_png_has_one_row_per_image_and_a_column_per_model(tmp_path):
    images = torch.rand(3, 3, 20, 20)
    masks = torch.zeros(3, 20, 20)
    masks[:, 2:8, 2:8] = 1
    vanilla = torch.randn(3, 3, 20, 20)
    corrected = torch.randn(3, 20, 20)
    path = save_heatmap_grid(images, {"vanilla": vanilla, "RR-ClArC": corrected}, tmp_path / "grid" / "heatmaps.png",
                             masks=masks, scores={"vanilla": [0.5, 0.6, 0.7]}, cell_pixels=64)
    assert path == tmp_path / "grid" / "heatmaps.png" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["heatmaps.png"]  # no temporary left behind
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (3 * 64 + HEADER_PIXELS, 3 * 64)
    assert pixels[..., 0].std() > 0  # something was drawn
    with pytest.raises(ValueError, match=r"attributions_by_model\['vanilla'\] must be shaped"):
        save_heatmap_grid(images, {"vanilla": vanilla[:2]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"masks must be shaped \[N, H, W\]"):
        save_heatmap_grid(images, {"vanilla": vanilla}, tmp_path / "bad.png", masks=masks[:, :10])
    assert not (tmp_path / "bad.png").exists()
