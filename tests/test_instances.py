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
    ids = instance_labels(stack, mode="watershed", offset=10, spatial_dims=2)
    assert ids.shape == stack.shape and ids.dtype == np.int32
    assert set(np.unique(ids[0])) == {0, 11, 12} and not ids[1].any() and set(np.unique(ids[2])) == {0, 13, 14}
    components = instance_labels(stack, mode="components", spatial_dims=2)
    assert set(np.unique(components)) == {0, 1, 2}
    # as a volume: the foreground of slices 0 and 2 makes two objects, parted by the empty slice between them
    assert set(np.unique(instance_labels(stack, mode="components"))) == {0, 1, 2}
    assert np.array_equal(instance_labels(stack, mode="components")[0] > 0, mask > 0)


def _balls(shape, centres, radius, spacing=(1, 1, 1)):
    """Balls of ``radius`` (physical units) around ``centres`` (physical), in voxels of ``spacing``."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    return np.any([(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < radius**2 for z, y, x in centres],
                  axis=0).astype(np.uint8)


def test_volume_components_connect_in_3d_by_faces_edges_and_corners():
    mask = np.zeros((3, 6, 6), np.uint8)
    mask[0, 1, 1] = mask[1, 2, 2] = mask[2, 3, 3] = 1  # a diagonal through the slices, corner to corner
    mask[0, 5, 5] = 1
    ids = instance_labels(mask, mode="components")
    assert ids.dtype == np.int32 and ids[0, 1, 1] == ids[1, 2, 2] == ids[2, 3, 3] != ids[0, 5, 5]
    assert set(np.unique(ids)) == {0, 1, 2}
    slices = instance_labels(mask, mode="components", spatial_dims=2, offset=4)
    assert set(np.unique(slices)) == {0, 5, 6, 7, 8}  # each slice on its own, ids unique across the stack


def test_watershed_splits_touching_balls_in_3d():
    mask = _balls((24, 24, 40), ((12, 12, 12), (12, 12, 27)), 9)  # 15 apart, radius 9: a neck at x = 19.5
    assert set(np.unique(instance_labels(mask, mode="components"))) == {0, 1}
    split = instance_labels(mask, mode="watershed", min_distance=3)
    assert set(np.unique(split)) == {0, 1, 2} and np.array_equal(split > 0, mask > 0)
    left, right = split[12, 12, 5], split[12, 12, 34]
    assert left != right and (split[..., :17] != right).all() and (split[..., 23:] != left).all()
    # slice by slice, the same balls fall apart into one object (or more) per slice
    assert len(np.unique(instance_labels(mask, mode="watershed", min_distance=3, spatial_dims=2))) > 3


def test_watershed_measures_distance_with_the_voxel_spacing():
    # two touching balls sampled with z sections 3x coarser than the pixels: in voxels they are flat discs
    spacing = (3.0, 1.0, 1.0)
    mask = _balls((10, 36, 60), ((15, 18, 18), (15, 18, 41)), 13, spacing)
    physical = instance_labels(mask, mode="watershed", min_distance=2, spacing=spacing)
    assert set(np.unique(physical)) == {0, 1, 2} and physical[5, 18, 10] != physical[5, 18, 50]
    in_voxels = instance_labels(mask, mode="watershed", min_distance=2)
    assert len(np.unique(in_voxels)) > 3  # the flat distance map has many peaks: over-split
    with pytest.raises(UserError, match=r"spacing \[3.0, 0.0, 1.0\] is not a positive size"):
        instance_labels(mask, mode="watershed", spacing=(3.0, 0.0, 1.0))
    with pytest.raises(UserError, match="cannot split labels of shape \\(36, 60\\) in 3D"):
        instance_labels(mask[0], mode="components", spatial_dims=3)


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


@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 1.0), (1.75, 0.8, 0.8)])
def test_distance_object_by_object_equals_scipy_over_the_whole_volume(spacing):
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    from skimage.measure import label

    from napari_unet_seg.instances import _distance

    mask = gaussian_filter(np.random.default_rng(1).random((20, 40, 40)), 2) > 0.52  # tens of blobs, some at borders
    components = label(mask)
    assert components.max() > 10 and mask[0].any()
    assert np.array_equal(_distance(components, spacing), distance_transform_edt(mask, sampling=spacing))


@pytest.mark.shared_data
def test_qcanet_nuclei_are_found_as_3d_objects_not_per_slice(shared_data):
    import tifffile

    from napari_unet_seg.evaluation import compare_labels

    name = "embryo_roi2_t262_8cell.tif"
    folder = shared_data / "qcanet-embryo-nuclei"
    foreground = tifffile.imread(folder / "masks" / name) > 0
    truth = tifffile.imread(folder / "masks_instances" / name)  # 8 nuclei, (51, 120, 122), 0.8 x 0.8 x 1.75 um
    volume = compare_labels(instance_labels(foreground, mode="watershed", spacing=(1.75, 0.8, 0.8)), truth)
    assert volume["objects_true"] == 8 and volume["object_f1"] == 1.0
    slices = compare_labels(instance_labels(foreground, mode="components", spatial_dims=2), truth)
    assert slices["objects_predicted"] > 8 * 10 and slices["object_f1"] < 0.1


@pytest.mark.parametrize("spacing", [(3.0, 1.0, 1.0), None])
def test_predict_splits_a_3d_models_volume_in_3d_with_its_spacing(spacing):
    import torch
    from torch import nn

    from napari_unet_seg.inference import predict
    from napari_unet_seg.model_file import SegmentationModel

    class Threshold(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 40 * (x - 0.5)

    config = {"spatial_dims": 3, "patch_size": 16, **({"spacing": list(spacing)} if spacing else {})}
    model = SegmentationModel(Threshold(), {"name": "unet", "kwargs": {"spatial_dims": 3}}, 1, 2, {"method": "none"},
                              config)
    mask = _balls((10, 36, 60), ((15, 18, 18), (15, 18, 41)), 13, (3.0, 1.0, 1.0))  # flat in voxels
    ids = predict(model, mask.astype(np.float32), device="cpu", instances="watershed", min_distance=2)
    assert np.array_equal(ids, instance_labels(mask, mode="watershed", min_distance=2, spacing=spacing))
    assert (len(np.unique(ids)) == 3) == (spacing is not None)  # in voxels the flat balls are over-split
