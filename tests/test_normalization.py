import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_unet_seg.errors import UserError
from napari_unet_seg.normalization import default_normalization, is_rgb, normalize, to_channels_first

PERCENTILE = default_normalization()


def test_percentile_maps_to_unit_range():
    image = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(1, 100, 100)
    out = normalize(image, PERCENTILE)
    assert out.dtype == np.float32
    assert abs(np.percentile(out, 1)) < 1e-5 and abs(np.percentile(out, 99.8) - 1) < 1e-5


def test_constant_image_gives_zeros_not_nan():
    out = normalize(np.full((1, 8, 8), 7, np.uint16), PERCENTILE)
    assert np.array_equal(out, np.zeros((1, 8, 8), np.float32))


def test_nan_and_inf_become_finite():
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    image[0, 0, 0], image[0, 1, 1], image[0, 2, 2] = np.nan, np.inf, -np.inf
    assert np.isfinite(normalize(image, PERCENTILE)).all()
    assert np.isfinite(normalize(np.full((1, 4, 4), np.nan, np.float32), PERCENTILE)).all()


def test_minmax_and_none():
    image = np.array([[[2.0, 4.0], [6.0, 10.0]]], np.float32)
    assert np.allclose(normalize(image, {"method": "minmax"}), (image - 2) / 8)
    assert np.array_equal(normalize(image, {"method": "none"}), image)
    with pytest.raises(UserError, match="unknown"):
        normalize(image, {"method": "zscore?"})


def test_channel_layout():
    gray, rgb, rgba = np.zeros((10, 12)), np.zeros((10, 12, 3)), np.zeros((10, 12, 4))
    assert to_channels_first(gray, 1).shape == (1, 10, 12)
    assert to_channels_first(rgb, 3).shape == (3, 10, 12)
    assert to_channels_first(rgba, 3).shape == (3, 10, 12)
    assert to_channels_first(rgb, 1).shape == (1, 10, 12)  # colour to a gray model: channel mean
    with pytest.raises(UserError, match="grayscale but the model expects 3"):
        to_channels_first(gray, 3)
    with pytest.raises(UserError, match="expected a 2D image"):
        to_channels_first(np.zeros((2, 3, 10, 12)), 1)
    assert is_rgb(rgb) and not is_rgb(np.zeros((3, 10, 12)))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.just(1), st.integers(1, 16), st.integers(1, 16)),
              elements=st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_normalize_never_produces_nan(image):
    assert np.isfinite(normalize(image, PERCENTILE)).all()


def test_blocks_scaled_with_the_whole_images_range_match_the_whole():
    from napari_unet_seg.normalization import intensity_range

    image = np.random.default_rng(0).integers(0, 4000, (1, 64, 96)).astype(np.uint16)
    whole = normalize(image, PERCENTILE)
    value_range = intensity_range(image, PERCENTILE)
    block = normalize(image[:, 10:40, 50:90], PERCENTILE, value_range)
    assert np.array_equal(block, whole[:, 10:40, 50:90])


def test_huge_images_are_measured_on_a_subsample_close_to_the_whole(monkeypatch):
    from napari_unet_seg import normalization

    image = np.random.default_rng(1).gamma(2.0, 50.0, (1, 300, 300)).astype(np.float32)
    exact = normalization.intensity_range(image, PERCENTILE)
    monkeypatch.setattr(normalization, "STATS_SAMPLE", 10_000)  # every 3rd pixel per axis
    sampled = normalization.intensity_range(image, PERCENTILE)
    assert sampled != exact
    assert abs(sampled["low"] - exact["low"]) < 0.02 * (exact["high"] - exact["low"])
    assert abs(sampled["high"] - exact["high"]) < 0.05 * (exact["high"] - exact["low"])
