"""Colour-Digits follows the ReBias protocol: exact bias counts, disjoint splits, fixed seeds, MNIST files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from hf_debias.data import COLOURS, build_colour_digits, colour_digits_arrays

SMALL = dict(n_train=2000, n_validation=300, n_test=300, image_size=16)


@pytest.fixture(scope="module")
def splits():
    return colour_digits_arrays(0.99, seed=0, **SMALL)


def test_shapes_and_split_names(splits):
    assert set(splits) == {"train", "validation", "test_unbiased", "test_biased"}
    assert splits["train"].images.shape == (2000, 16, 16, 3) and splits["train"].images.dtype == np.uint8
    assert splits["test_unbiased"].labels.shape == (300,)


def test_exactly_rho_of_each_class_gets_its_class_colour(splits):
    train = splits["train"]
    for digit in range(10):
        members = train.labels == digit
        expected_conflicting = members.sum() - round(0.99 * members.sum())
        assert (train.bias_labels[members] != digit).sum() == expected_conflicting
    # The conflicting samples of a class are spread evenly over the other 9 colours.
    conflicting = train.bias_labels[(train.labels == 0) & (train.bias_labels != 0)]
    counts = np.bincount(conflicting, minlength=10)[1:]
    assert counts.max() - counts.min() <= 1
    assert splits["test_biased"].num_conflicting == 0
    assert splits["validation"].num_conflicting == pytest.approx(0.01 * 300, abs=10)


def test_unbiased_test_colours_are_independent_of_the_digit(splits):
    test = splits["test_unbiased"]
    assert (test.bias_labels == test.labels).mean() == pytest.approx(0.1, abs=0.02)
    assert set(np.unique(test.bias_labels)) == set(range(10))


def test_background_is_the_bias_colour_and_the_stroke_is_white(splits):
    train = splits["train"]
    corner = train.images[:, 0, 0, :]  # the corner is always background
    np.testing.assert_array_equal(corner, np.asarray(COLOURS, dtype=np.uint8)[train.bias_labels])
    assert (train.images.reshape(2000, -1, 3) == 255).all(axis=2).any(axis=1).mean() > 0.5  # white strokes


def test_foreground_mode_colours_the_digit_on_black():
    split = colour_digits_arrays(0.99, colour_mode="foreground", seed=0, **SMALL)["train"]
    assert (split.images[:, 0, 0, :] == 0).all()
    brightest = split.images.reshape(len(split.labels), -1, 3).max(axis=1)
    np.testing.assert_allclose(brightest, np.asarray(COLOURS)[split.bias_labels], atol=40)


def test_test_images_come_from_base_digits_never_seen_in_training(splits):
    train_sources = set(splits["train"].source_ids)
    assert not train_sources & set(splits["test_unbiased"].source_ids)
    assert not train_sources & set(splits["validation"].source_ids)
    assert not train_sources & set(splits["test_biased"].source_ids)


def test_training_images_are_distinct_variants(splits):
    flat = splits["train"].images.reshape(2000, -1)
    assert len(np.unique(flat, axis=0)) == 2000


def test_fixed_seeds_reproduce_and_other_seeds_differ(splits):
    again = colour_digits_arrays(0.99, seed=0, **SMALL)
    np.testing.assert_array_equal(again["train"].images, splits["train"].images)
    other = colour_digits_arrays(0.99, seed=1, **SMALL)
    assert not np.array_equal(other["train"].images, splits["train"].images)


def test_conflicting_counts_at_full_size_match_biased_mnist():
    # 60,000 training images as in Biased-MNIST: (1 - rho) * 60,000 conflicting, up to per-class rounding.
    for rho, expected in ((0.99, 600), (0.995, 300), (0.997, 180), (0.999, 60)):
        labels = np.repeat(np.arange(10), 6000)
        from hf_debias.data import assign_colours

        colours = assign_colours(labels, rho, 9, np.random.default_rng(0))
        assert (colours != labels).sum() == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rho": 1.5}, "rho must be in"), ({"colour_mode": "stripes"}, "colour_mode"),
    ({"n_confusing_colours": 0}, "n_confusing_colours"), ({"source": "/nonexistent"}, "MNIST idx files"),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    args = {**SMALL, "rho": 0.99, **kwargs}
    with pytest.raises(ValueError, match=message):
        colour_digits_arrays(**args)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_real_mnist_files_build_biased_mnist_through_the_same_builder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 100)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    splits = colour_digits_arrays(0.99, source=tmp_path, n_train=360, n_validation=40, n_test=100, seed=0)
    assert splits["train"].images.shape == (360, 28, 28, 3)
    assert {sid.split(":")[0] for sid in splits["test_unbiased"].source_ids} == {"t10k"}
    assert not set(splits["train"].source_ids) & set(splits["validation"].source_ids)
    # No augmentation for MNIST: a training image is its source digit, coloured.
    assert len(set(splits["train"].source_ids)) == 360


def test_datasets_builder_returns_image_label_and_bias_columns():
    dataset = build_colour_digits(0.99, n_train=100, n_validation=20, n_test=20, image_size=16, seed=0)
    assert set(dataset) == {"train", "validation", "test_unbiased", "test_biased"}
    train = dataset["train"]
    assert train.column_names == ["image", "labels", "bias_labels"]
    assert train.features["bias_labels"].names[0] == "red"
    first = train[0]
    assert first["image"].size == (16, 16) and first["image"].mode == "RGB"
    arrays = colour_digits_arrays(0.99, n_train=100, n_validation=20, n_test=20, image_size=16, seed=0)
    np.testing.assert_array_equal(np.asarray(first["image"]), arrays["train"].images[0])
    assert train["bias_labels"] == arrays["train"].bias_labels.tolist()
