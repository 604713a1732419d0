import numpy as np
import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.postprocessing import postprocess


def _hollow_cube() -> np.ndarray:
    """A 6x6x6 cube with a 2x2x2 cavity inside, in a 12x12x12 volume, and a lone voxel (a speck)."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    labels[4:6, 4:6, 4:6] = 0
    labels[10, 10, 10] = 1
    return labels


def test_volume_specks_removed_and_cavity_filled_in_3d():
    labels = _hollow_cube()
    out = postprocess(labels, min_size=2, fill_holes=True)
    assert out[10, 10, 10] == 0 and out[2:8, 2:8, 2:8].all()
    assert int(out.sum()) == 6**3
    assert np.array_equal(labels, _hollow_cube())  # the input is left as it was
    assert postprocess(labels) is labels


def test_min_size_counts_voxels_of_3d_objects():
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1:4, 2, 2] = 1  # a column of 3 voxels, one per slice: 1 pixel in each slice, 3 voxels in 3D
    assert postprocess(labels, min_size=3)[1:4, 2, 2].all()
    assert not postprocess(labels, min_size=4).any()
    assert not postprocess(labels, min_size=2, spatial_dims=2).any()  # slice by slice: 1-pixel specks


def test_a_hole_in_each_slice_is_no_hole_in_3d():
    # a tube along z through the whole volume: each slice is a ring around a hole, but in 3D the hole is a
    # channel open at both ends, so it is background, not a cavity
    labels = np.zeros((5, 9, 9), np.uint8)
    labels[:, 2:7, 2:7] = 1
    labels[:, 4, 4] = 0
    assert np.array_equal(postprocess(labels, fill_holes=True), labels)
    per_slice = postprocess(labels, fill_holes=True, spatial_dims=2)
    assert per_slice[:, 4, 4].all() and int(per_slice.sum()) == int(labels.sum()) + 5


def test_each_class_is_post_processed_on_its_own():
    labels = _hollow_cube() * 2
    labels[4:6, 4:6, 4:6] = 1  # the cavity holds another class: not a hole of class 2, kept
    labels[0, 0, 0] = 1  # a speck of class 1
    out = postprocess(labels, min_size=2, fill_holes=True)
    assert (out[4:6, 4:6, 4:6] == 1).all() and out[0, 0, 0] == 0 and out[10, 10, 10] == 0


def test_images_as_before_and_bad_dimensions_refused():
    image = np.zeros((20, 20), np.uint8)
    image[2:10, 2:10] = 1
    image[5, 5] = 0
    image[15, 15] = 1
    out = postprocess(image, min_size=4, fill_holes=True)
    assert out[15, 15] == 0 and out[5, 5] == 1 and out[2:10, 2:10].all()
    with pytest.raises(UserError, match=r"cannot post-process labels of shape \(20, 20\) in 3D"):
        postprocess(image, min_size=4, spatial_dims=3)
    with pytest.raises(UserError, match="expected an image"):
        postprocess(np.zeros((2, 3, 4, 5), np.uint8), fill_holes=True)


def test_keep_largest_keeps_one_object_per_class_before_filling_holes():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:12, 2:12] = 1  # the largest class-1 object, with a hole
    labels[6, 6] = 0
    labels[15:18, 15:18] = 1  # a smaller class-1 object
    labels[0:2, 16:20] = 2  # class 2: two objects, the larger kept
    labels[18:20, 0:1] = 2
    out = postprocess(labels, keep_largest=True, fill_holes=True)
    assert not out[15:18, 15:18].any() and out[6, 6] == 1 and out[2:12, 2:12].all()
    assert (out == 2).sum() == 8 and not out[18:20, 0].any()
    assert np.array_equal(postprocess(labels, keep_largest=True)[6, 6], 0)  # no filling unless asked


def test_keep_largest_in_3d_and_slice_by_slice():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, 1:5, 1:5] = 1  # a column through every slice: the largest 3D object
    labels[0, 7:10, 7:10] = 1  # 9 pixels in slice 0: larger than the column's 16? no, smaller
    labels[3, 6:10, 5:10] = 1  # 20 pixels in slice 3: the largest there, small in 3D
    volume = postprocess(labels, keep_largest=True)
    assert volume[:, 1:5, 1:5].all() and volume.sum() == 64
    slices = postprocess(labels, keep_largest=True, spatial_dims=2)
    assert slices[3, 6:10, 5:10].all() and not slices[3, 1:5, 1:5].any() and slices[0, 1:5, 1:5].all()


def test_prediction_settings_take_the_callers_then_the_models_then_the_defaults():
    from napari_unet_seg.postprocessing import CHOICES, prediction_settings

    assert prediction_settings({}) == CHOICES
    chosen = {"threshold": 0.4, "keep_largest": True, "evidence": {"images": 3}}
    assert prediction_settings(chosen) == {**CHOICES, "threshold": 0.4, "keep_largest": True}
    assert prediction_settings(chosen, threshold=0.7, keep_largest=False, tta=None) == {**CHOICES, "threshold": 0.7}
