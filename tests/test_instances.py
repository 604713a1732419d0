import numpy as np
import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.instances import check_instances, instance_labels


def _two_touching_discs(shape=(60, 90), radius=15):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = ((30, 30), (30, 56))  # 26 px apart: the discs overlap in a narrow neck
    return np.any([(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2 for cy, cx in centres], axis=0).astype(np.uint8)


def test_watershed_splits_touching_discs_that_components_keeps_whole():
    mask = _two_touching_discs()
    components = instance_labels(mask, mode="components")
    assert components.dtype == np.int32 and set(np.unique(components)) == {0, 1}
    split = instance_labels(mask, mode="watershed", min_distance=5)
    assert split.dtype == np.int32 and set(np.unique(split)) == {0, 1, 2}
    assert np.array_equal(split > 0, mask > 0)  # masked to the foreground, nothing lost
    left, right = split[30, 20], split[30, 66]
    assert {left, right} == {1, 2}
    assert (split[:, :35] != right).all() and (split[:, 52:] != left).all()  # cut near the neck at x = 43


def test_probability_weighting_and_separate_objects():
    mask = _two_touching_discs()
    probability = np.where(mask > 0, 0.9, 0.1)
    probability[:, 40:47] = np.where(mask[:, 40:47] > 0, 0.55, 0.1)  # less sure at the neck
    split = instance_labels(mask, probability, mode="watershed")
    assert len(np.unique(split)) == 3
    specks = np.zeros((20, 20), np.uint8)
    specks[2, 2] = specks[10:14, 10:14] = 1
    for mode in ("components", "watershed"):
        assert set(np.unique(instance_labels(specks, mode=mode))) == {0, 1, 2}
        assert not instance_labels(np.zeros((8, 8), bool), mode=mode).any()


def test_stack_ids_are_unique_across_slices():
    mask = _two_touching_discs()
    stack = np.stack([mask, np.zeros_like(mask), mask])
    ids = instance_labels(stack, mode="watershed", offset=10)
    assert ids.shape == stack.shape and ids.dtype == np.int32
    assert set(np.unique(ids[0])) == {0, 11, 12} and not ids[1].any() and set(np.unique(ids[2])) == {0, 13, 14}
    components = instance_labels(stack, mode="components")
    assert set(np.unique(components)) == {0, 1, 2}


def test_multi_class_and_bad_options_are_refused():
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    with pytest.raises(UserError, match="binary models only"):
        instance_labels(labels, mode="components")
    with pytest.raises(UserError, match="instances need a binary model, this one has 3 classes"):
        check_instances("watershed", num_classes=3)
    check_instances("none", num_classes=3)  # class labels of multi-class models stay possible
    with pytest.raises(UserError, match="instances 'blobs' is unknown"):
        check_instances("blobs")
    with pytest.raises(UserError, match="min distance"):
        instance_labels(labels > 0, mode="watershed", min_distance=0)
    with pytest.raises(UserError, match="does not match"):
        instance_labels(labels > 0, np.zeros((3, 3)), mode="watershed")
