"""end_terms / end_penalty against a plain pair-by-pair implementation written from the paper's formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_debias.functional import end_penalty, end_terms


def pairwise_end_terms(features, targets, bias_labels, pairing):
    """Direct transcription of methods.md §1: loop over every pair i > j."""
    unit = F.normalize(features.reshape(features.shape[0], -1).double(), dim=1)
    gram = (unit @ unit.T).clamp(-1, 1)
    group_sums, n_same, par_values = {}, 0, []
    for i in range(len(unit)):
        for j in range(i):
            bi, bj = int(bias_labels[i]), int(bias_labels[j])
            if bi == bj:
                group_sums[bi] = group_sums.get(bi, 0) + gram[i, j]
                n_same += 1
            elif int(targets[i]) == int(targets[j]) and (pairing == "all" or bi < bj):
                par_values.append((1 - gram[i, j]) / 2)
    zero = unit.sum() * 0
    r_ortho = sum(abs(s) for s in group_sums.values()) / n_same if n_same else zero
    r_par = sum(par_values) / len(par_values) if par_values else zero
    return r_ortho, r_par


def random_batch(seed, batch=24, shape=(6, 2, 2), n_targets=3, n_bias=4, gaps=False):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, *shape, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, n_targets, (batch,), generator=generator)
    bias = torch.randint(0, n_bias, (batch,), generator=generator)
    if gaps:  # labels with gaps and negative values
        targets, bias = targets * 7 - 3, bias * 11 - 20
    return features, targets, bias


def assert_matches_reference(features, targets, bias, pairing):
    ours_x = features.clone().requires_grad_(True)
    ref_x = features.clone().requires_grad_(True)
    ours = end_terms(ours_x, targets, bias, pairing=pairing)
    ref = pairwise_end_terms(ref_x, targets, bias, pairing)
    for got, want in zip(ours, ref):
        assert got.dim() == 0
        torch.testing.assert_close(got.double(), torch.as_tensor(want, dtype=torch.float64), atol=1e-10, rtol=1e-9)
    for weights in ((1.0, 0.0), (0.0, 1.0), (0.7, 1.3)):
        gx, = torch.autograd.grad(weights[0] * ours[0] + weights[1] * ours[1], ours_x, retain_graph=True)
        gr, = torch.autograd.grad(weights[0] * ref[0] + weights[1] * ref[1], ref_x, retain_graph=True,
                                  allow_unused=True)
        gr = torch.zeros_like(ref_x) if gr is None else gr
        torch.testing.assert_close(gx, gr, atol=1e-10, rtol=1e-8)


@pytest.fixture(params=[False, True], ids=["cpu_group_buffers", "batch_sized_group_buffers"])
def padded(request, monkeypatch):
    """Run a test as on the CPU and as on a GPU (batch-sized group buffers with empty groups, deferred checks)."""
    import hf_debias.functional.end as end_module

    monkeypatch.setattr(end_module, "_host_reads_are_free", lambda device: not request.param)
    return request.param


@pytest.mark.parametrize("pairing", ["all", "reference"])
@pytest.mark.parametrize("seed", range(5))
def test_random_batches_match_pairwise_reference(pairing, seed, padded):
    assert_matches_reference(*random_batch(seed), pairing)


@pytest.mark.parametrize("pairing", ["all", "reference"])
def test_labels_with_gaps_and_negative_values(pairing, padded):
    features, targets, bias = random_batch(7, gaps=True)
    assert_matches_reference(features, targets, bias, pairing)
    # Relabelling must not change anything for "all" (only the order of bias values matters for "reference").
    base = random_batch(7)
    torch.testing.assert_close(end_terms(features, targets, bias, pairing=pairing),
                               end_terms(*base, pairing=pairing))


@pytest.mark.parametrize("pairing", ["all", "reference"])
@pytest.mark.parametrize("case", ["one_sample", "one_bias_value", "no_same_target_pairs", "all_distinct"])
def test_degenerate_batches_are_exact_zero_or_match(pairing, case, padded):
    features = torch.randn(6, 5, dtype=torch.float64)
    if case == "one_sample":
        features, targets, bias = features[:1], torch.tensor([3]), torch.tensor([1])
    elif case == "one_bias_value":
        targets, bias = torch.tensor([0, 0, 1, 1, 2, 2]), torch.full((6,), 4)
    elif case == "no_same_target_pairs":
        targets, bias = torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2])
    else:
        targets, bias = torch.arange(6), torch.arange(6)
    x = features.clone().requires_grad_(True)
    r_ortho, r_par = end_terms(x, targets, bias, pairing=pairing)
    assert torch.isfinite(r_ortho) and torch.isfinite(r_par)
    if case in ("one_sample", "all_distinct"):
        assert r_ortho.item() == 0.0 and r_par.item() == 0.0
    if case in ("one_bias_value", "no_same_target_pairs"):
        assert r_par.item() == 0.0
    (r_ortho + r_par).backward()
    assert torch.isfinite(x.grad).all()
    assert_matches_reference(features, targets, bias, pairing)


def test_all_pairing_is_independent_of_batch_order_reference_is_not():
    features, targets, bias = random_batch(3, batch=32)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    a = end_terms(features, targets, bias, pairing="all")
    b = end_terms(features[perm], targets[perm], bias[perm], pairing="all")
    torch.testing.assert_close(a, b)
    ref_a = end_terms(features, targets, bias, pairing="reference")[1]
    ref_b = end_terms(features[perm], targets[perm], bias[perm], pairing="reference")[1]
    assert not torch.isclose(ref_a, ref_b)


def test_reference_pairing_uses_about_half_the_pairs():
    # With two bias values, "reference" keeps the pairs i > j with b_i < b_j: here exactly one of the two.
    features = torch.randn(2, 3, dtype=torch.float64)
    gram = F.normalize(features, dim=1) @ F.normalize(features, dim=1).T
    expected = (1 - gram[1, 0]) / 2
    assert end_terms(features, torch.tensor([0, 0]), torch.tensor([0, 1]), pairing="reference")[1] == 0
    torch.testing.assert_close(end_terms(features, torch.tensor([0, 0]), torch.tensor([1, 0]), pairing="reference")[1],
                               expected)
    torch.testing.assert_close(end_terms(features, torch.tensor([0, 0]), torch.tensor([0, 1]), pairing="all")[1],
                               expected)


def test_known_values_orthogonal_and_parallel_features():
    eye = torch.eye(4)
    # Same bias, orthogonal features: r_ortho = 0. Same class, different bias, orthogonal: r_par = 1/2.
    r_ortho, r_par = end_terms(eye[:2], torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert r_ortho.item() == 0.0 and r_par.item() == 0.0
    r_ortho, r_par = end_terms(eye[:2], torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert r_ortho.item() == 0.0 and r_par.item() == pytest.approx(0.5)
    # Parallel features of one bias group: r_ortho = 1; the |.| is of the group sum, so +1 and -1 cancel.
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert end_terms(same, torch.tensor([0, 1]), torch.tensor([5, 5]))[0].item() == pytest.approx(1.0)
    three = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])  # pairs: -1, +1, -1 -> |sum| / 3 = 1/3
    assert end_terms(three, torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]))[0].item() == pytest.approx(1 / 3)


def test_end_penalty_weights_the_terms():
    features, targets, bias = random_batch(1)
    r_ortho, r_par = end_terms(features, targets, bias)
    torch.testing.assert_close(end_penalty(features, targets, bias, alpha=0.3, beta=2.0), 0.3 * r_ortho + 2.0 * r_par)
    assert end_penalty(features, targets, bias, alpha=0.0, beta=0.0).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    features, targets, bias = random_batch(2)
    low = features.to(dtype)
    r_ortho, r_par = end_terms(low, targets, bias)
    assert r_ortho.dtype == torch.float32 and r_par.dtype == torch.float32
    expected = end_terms(low.double(), targets, bias)
    torch.testing.assert_close(r_ortho.double(), expected[0], atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = end_terms(features.float(), targets, bias)
    assert inside[0].dtype == torch.float32
    torch.testing.assert_close(inside[0].double(), end_terms(features, targets, bias)[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": torch.tensor([0.0, 1.0, 1.0])}, "integer class ids"),
        ({"bias_labels": torch.tensor([[0], [1], [1]])}, "must be 1-D"),
        ({"bias_labels": torch.tensor([0, 1])}, "the batch has 3 samples"),
        ({"targets": [0, 1, 1]}, "torch.Tensor"),
        ({"features": torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]])}, "NaN or infinite"),
        ({"features": torch.tensor([1.0, 2.0, 3.0])}, r"shaped \[B, ...\]"),
        ({"features": torch.ones(3, 2, dtype=torch.long)}, "floating-point"),
        ({"pairing": "half"}, "choose one of: 'all', 'reference'"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(kwargs, message):
    call = {"features": torch.randn(3, 2), "targets": torch.tensor([0, 1, 1]), "bias_labels": torch.tensor([0, 0, 1])}
    pairing = kwargs.pop("pairing", "all")
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        end_terms(call["features"], call["targets"], call["bias_labels"], pairing=pairing)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1"])
def test_negative_or_non_finite_weights_are_rejected(bad):
    features, targets, bias = random_batch(0)
    with pytest.raises(ValueError, match="alpha"):
        end_penalty(features, targets, bias, alpha=bad)
    with pytest.raises(ValueError, match="beta"):
        end_penalty(features, targets, bias, beta=bad)


@pytest.mark.parametrize("pairing", ["all", "reference"])
def test_one_dominant_target_matches_pairwise_reference(pairing, padded):
    # One target holds most of the batch: "reference" then takes one B x B block with a same-target condition
    # instead of padded per-target blocks.
    features, _, bias = random_batch(11, batch=20)
    targets = torch.tensor([4] * 17 + [1, 2, 1])
    assert_matches_reference(features, targets, bias, pairing)


def test_zero_feature_row_gets_the_gradient_of_f_normalize():
    # A zero row is scaled by 1 / eps (as F.normalize), with no radial part; its gradient must match autograd's.
    features, targets, bias = random_batch(12, batch=8, shape=(5,))
    features[3] = 0.0
    ours_x, ref_x = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    sum(end_terms(ours_x, targets, bias)).backward()
    sum(pairwise_end_terms(ref_x, targets, bias, "all")).backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad, atol=1e-6, rtol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pairing", ["all", "reference"])
def test_cuda_matches_cpu_values_and_gradients(pairing):
    features, targets, bias = random_batch(13, batch=64, n_targets=5, n_bias=6, gaps=True)
    cpu_x, cuda_x = features.clone().requires_grad_(True), features.cuda().requires_grad_(True)
    cpu_terms = end_terms(cpu_x, targets, bias, pairing=pairing)
    cuda_terms = end_terms(cuda_x, targets.cuda(), bias.cuda(), pairing=pairing)
    for cpu_value, cuda_value in zip(cpu_terms, cuda_terms):
        torch.testing.assert_close(cuda_value.cpu(), cpu_value, atol=1e-10, rtol=1e-9)
    (0.7 * cpu_terms[0] + 1.3 * cpu_terms[1]).backward()
    (0.7 * cuda_terms[0] + 1.3 * cuda_terms[1]).backward()
    torch.testing.assert_close(cuda_x.grad.cpu(), cpu_x.grad, atol=1e-10, rtol=1e-8)


def test_non_finite_features_raise_on_cpu_and_propagate_without_a_wait_on_accelerators(monkeypatch):
    import hf_debias.functional.end as end_module

    features, targets, bias = random_batch(14, batch=8, shape=(5,))
    features[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        end_terms(features, targets, bias)
    # As on a GPU: no host wait; the terms and the gradient carry the NaN (DebiasTrainer raises when logging).
    monkeypatch.setattr(end_module, "_host_reads_are_free", lambda device: False)
    x = features.clone().requires_grad_(True)
    r_ortho, r_par = end_terms(x, targets, bias)
    assert torch.isnan(r_ortho) and torch.isnan(r_par)
    (r_ortho + r_par).backward()
    assert torch.isnan(x.grad).any()
