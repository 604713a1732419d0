import numpy as np
import pytest
import torch

from napari_unet_seg.dataset import (PatchDataset, build_augmentation, load_samples, mask_to_classes,
                                     samples_from_arrays, split_indices)
from napari_unet_seg.errors import UserError
from napari_unet_seg.normalization import default_normalization
from napari_unet_seg.pairing import pair_files

NORM = default_normalization()


def test_mask_conventions():
    assert mask_to_classes(np.array([[0, 255]]), 2).tolist() == [[0, 1]]
    assert mask_to_classes(np.array([[0, 1]], bool), 2).tolist() == [[0, 1]]
    assert mask_to_classes(np.array([[0, 7]]), 2).tolist() == [[0, 1]]
    assert mask_to_classes(np.array([[0, 1, 2]]), 3).tolist() == [[0, 1, 2]]
    gray_rgb = np.zeros((8, 8, 3), np.uint8)
    gray_rgb[2:4] = 255
    assert np.array_equal(mask_to_classes(gray_rgb, 2), (gray_rgb[..., 0] > 0).astype(np.uint8))


def test_bad_masks():
    with pytest.raises(UserError, match=r"values \[255\] outside the class ids 0..2"):
        mask_to_classes(np.array([[0, 255]]), 3)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(UserError, match="colour \\(RGB\\) mask"):
        mask_to_classes(colour, 2)
    with pytest.raises(UserError, match="one 2D image"):
        mask_to_classes(np.zeros((2, 8, 8)), 2)
    for dtype in (np.int16, np.float32):  # an "ignore" label -1 would train as background
        with pytest.raises(UserError, match=r"m.tif: holds negative values \(e.g. -1\); masks must hold class ids"):
            mask_to_classes(np.array([[0, 1, -1]], dtype), 2, "m.tif")
    assert mask_to_classes(np.array([[0, 3]], np.int32), 2).tolist() == [[0, 1]]  # signed, not negative


def test_load_samples_normalizes_and_checks(synthetic_dir):
    samples, channels = load_samples(pair_files(*synthetic_dir), classes=2, normalization=NORM)
    assert channels == 1 and len(samples) == 8
    assert samples[0].image.shape == (1, 64, 64) and samples[0].mask.dtype == np.uint8
    assert set(np.unique(samples[0].mask)) <= {0, 1}


def test_size_mismatch_and_mixed_channels():
    with pytest.raises(UserError, match=r"image is 8x10 \(Y x X\) but its mask is 8x9 \(Y x X\)"):
        samples_from_arrays([(np.zeros((8, 10)), np.zeros((8, 9)))], classes=2, normalization=NORM)
    samples, channels = samples_from_arrays([(np.zeros((8, 8)), np.zeros((8, 8))),
                                             (np.zeros((8, 8, 3)), np.zeros((8, 8)))], classes=2,
                                            normalization=NORM)
    assert channels == 3 and samples[0].image.shape == (3, 8, 8)
    with pytest.raises(UserError, match="split stacks"):
        samples_from_arrays([(np.zeros((2, 8, 8, 3)), np.zeros((8, 8)))], classes=2, normalization=NORM)


def test_resize_mode():
    samples, _ = samples_from_arrays([(np.random.rand(30, 50), (np.random.rand(30, 50) > 0.5))], classes=2,
                                     normalization=NORM, resize=32)
    assert samples[0].image.shape == (1, 32, 32) and samples[0].mask.shape == (32, 32)
    assert set(np.unique(samples[0].mask)) <= {0, 1}


def test_split_is_seeded_and_disjoint():
    train, val = split_indices(20, 0.1, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == list(range(20))
    assert split_indices(20, 0.1, seed=3) == (train, val)
    assert split_indices(20, 0.1, seed=4) != (train, val)
    assert split_indices(2, 0.1, 0)[1] != [] and split_indices(1, 0.1, 0) == ([0], [0])
    assert split_indices(5, 0.0, 0)[1] == []
    with pytest.raises(UserError):
        split_indices(0, 0.1, 0)


def test_patches_cover_images_and_pad_small_ones():
    samples, _ = samples_from_arrays([(np.random.rand(64, 64), np.ones((64, 64))),
                                      (np.random.rand(10, 20), np.ones((10, 20)))], classes=2, normalization=NORM)
    ds = PatchDataset(samples, 32, None, seed=0)
    assert len(ds) == 4 + 1  # 64x64 holds four 32x32 patch areas; the small image gives one
    image, mask = ds[4]
    assert image.shape == (1, 32, 32) and mask.shape == (1, 32, 32)
    assert mask[0, :10, :20].all() and not mask[0, 10:, :].any()  # zero padding outside the image


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_augmentation_keeps_image_and_mask_aligned(preset):
    # The mask is the image thresholded: after any geometric transform they must still agree.
    rng = np.random.default_rng(0)
    image = (rng.random((48, 48)) > 0.7).astype(np.float32)
    samples, _ = samples_from_arrays([(image, image)], classes=2, normalization={"method": "none"})
    ds = PatchDataset(samples, 48, build_augmentation(preset, 48), seed=1)
    for seed in range(5):
        ds.reseed(seed)
        aug_image, aug_mask = ds[0]
        assert aug_image.dtype == torch.float32 and aug_mask.shape == (1, 48, 48)
        assert set(torch.unique(aug_mask).tolist()) <= {0.0, 1.0}
        agree = ((aug_image[0] > 0.5) == (aug_mask[0] > 0.5)).float().mean()
        assert agree > 0.85


def test_reseed_repeats_the_stream():
    samples, _ = samples_from_arrays([(np.random.rand(64, 64), np.ones((64, 64)))], classes=2, normalization=NORM)
    ds = PatchDataset(samples, 16, build_augmentation("strong", 16), seed=0)
    ds.reseed(7)
    first = [ds[i][0] for i in range(3)]
    ds.reseed(7)
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))


def test_volumes_are_samples_normalized_as_a_whole():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 200, (4, 16, 16)).astype(np.uint16)
    volume[3] += 1000  # one bright slice: normalized with the others, not on its own
    mask = np.zeros((4, 16, 16), np.uint8)
    mask[1:3, 4:8, 4:8] = 255
    samples, channels = samples_from_arrays([(volume, mask)], classes=2, normalization=NORM, spatial_dims=3)
    (sample,) = samples
    assert channels == 1 and sample.image.shape == (1, 4, 16, 16) and sample.image.dtype == np.float16
    assert sample.mask.shape == (4, 16, 16) and sample.mask.sum() == 2 * 16
    assert sample.image[0, 3].mean() > 0.9 > 0.2 > sample.image[0, :3].mean()
    colour, channels = samples_from_arrays([(np.stack([volume] * 3, -1), mask)], classes=2, normalization=NORM,
                                           spatial_dims=3)
    assert channels == 3 and colour[0].image.shape == (3, 4, 16, 16)


@pytest.mark.parametrize("image, mask, message", [
    (np.zeros((4, 16, 16)), np.zeros((4, 16, 15)), r"image volume is 4x16x16 .* mask is 4x16x15"),
    (np.zeros((4, 16, 16)), np.zeros((3, 16, 16)), r"image volume is 4x16x16 .* mask is 3x16x16"),
    (np.zeros((16, 16)), np.zeros((16, 16)), r"\(16, 16\) is a 2D image, not a volume"),
    (np.zeros((1, 16, 16)), np.zeros((1, 16, 16)), r"has 1 slice; 3D training needs at least 2"),
    (np.zeros((4, 16, 16)), np.zeros((16, 16)), r"must be one volume \(Z, Y, X\), got shape \(16, 16\)"),
])
def test_bad_volumes_are_one_line(image, mask, message):
    with pytest.raises(UserError, match=message) as error:
        samples_from_arrays([(image, mask)], classes=2, normalization=NORM, spatial_dims=3, names=["v.tif"])
    assert str(error.value).startswith("v.tif") and "\n" not in str(error.value)


def test_stacks_train_as_slices_in_2d():
    volume, mask = np.random.default_rng(1).random((3, 16, 16)), np.zeros((3, 16, 16), np.uint8)
    mask[2, :4] = 1
    with pytest.raises(UserError, match="split stacks"):  # as before, unless slices are asked for
        samples_from_arrays([(volume, mask)], classes=2, normalization=NORM)
    samples, _ = samples_from_arrays([(volume, mask), (volume[0], mask[0])], classes=2, normalization=NORM,
                                     slices=True, names=["s", "p"])
    assert [s.name for s in samples] == ["s[z=0]", "s[z=1]", "s[z=2]", "p"]
    assert samples[0].image.shape == (1, 16, 16) and samples[2].mask.sum() == 64
    with pytest.raises(UserError, match=r"s: image stack is 3x16x16 .* mask is 2x16x16"):
        samples_from_arrays([(volume, mask[:2])], classes=2, normalization=NORM, slices=True, names=["s"])


def test_volume_files_are_read_as_volumes(tmp_path):
    import tifffile

    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    volume = np.random.default_rng(2).integers(0, 255, (5, 16, 16)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "i" / "v.tif", volume)
    tifffile.imwrite(tmp_path / "m" / "v.tif", (volume > 128).astype(np.uint8) * 255)
    samples, _ = load_samples(pair_files(tmp_path / "i", tmp_path / "m"), classes=2, normalization=NORM,
                              spatial_dims=3)
    assert samples[0].image.shape == (1, 5, 16, 16)
    assert np.array_equal(samples[0].mask, (volume > 128).astype(np.uint8))
