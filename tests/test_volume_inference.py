"""3D models predict volumes as volumes (volume_inference.py, through inference.predict)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet_seg.errors import UserError
from napari_unet_seg.events import Tiles, drain
from napari_unet_seg.inference import predict, predict_steps
from napari_unet_seg.model_file import SegmentationModel
from napari_unet_seg.models import build_network, network_kwargs
from napari_unet_seg.normalization import default_normalization


def _unet_3d(in_channels: int = 1, classes: int = 2, seed: int = 0, **config) -> SegmentationModel:
    """A tiny random 3D U-Net with batch-norm statistics set so that its output varies across the volume."""
    torch.manual_seed(seed)
    kwargs = network_kwargs("unet", 0.25, spatial_dims=3)
    network = build_network("unet", in_channels, 1 if classes == 2 else classes, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_var.uniform_(0.5, 1.0, generator=generator)
    return SegmentationModel(network, {"name": "unet", "kwargs": kwargs}, in_channels, classes,
                             default_normalization("percentile"), {"patch_size": 32, "spatial_dims": 3, **config})


def _conv_3d(kernel: int = 3, classes: int = 2, gain: float = 1.0) -> SegmentationModel:
    """One 3D convolution (weights times ``gain``): a receptive field of ``kernel`` voxels, so a tile's
    output differs from the untiled one only in its outermost voxels."""
    torch.manual_seed(1)
    network = torch.nn.Conv3d(1, 1 if classes == 2 else classes, kernel, padding=kernel // 2).eval()
    with torch.no_grad():
        network.weight.mul_(gain)
    return SegmentationModel(network, {"name": "conv", "kwargs": {"spatial_dims": 3}}, 1, classes,
                             default_normalization("minmax"), {"patch_size": 16, "spatial_dims": 3})


def _volume(shape=(20, 40, 48), seed=0) -> np.ndarray:
    """Blobs on a noisy background, uint16."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    smooth = gaussian_filter(rng.random(shape), 2.0)
    return ((smooth - smooth.min()) / np.ptp(smooth) * 4000 + rng.normal(0, 50, shape)).clip(0).astype(np.uint16)


@pytest.fixture(scope="module")
def unet():
    return _unet_3d()


def test_a_volume_is_predicted_as_a_volume(unet):
    volume = _volume()
    events = []
    result = drain(predict_steps(unet, volume, device="cpu", precision="fp32", return_probabilities=True,
                                 uncertainty=True), events.append)
    assert result.labels.shape == result.probabilities.shape == result.uncertainty.shape == volume.shape
    assert result.labels.dtype == np.uint8 and result.probabilities.dtype == np.float32
    np.testing.assert_array_equal(result.labels, (result.probabilities > 0.5).astype(np.uint8))
    assert result.probabilities.std() > 1e-3  # the output varies, so the comparisons below mean something
    assert all(isinstance(e, Tiles) for e in events) and events[-1].done == events[-1].total
    # a 3D network, not slices: the prediction of one slice depends on its neighbours
    alone = predict(unet, volume[8:12], device="cpu", precision="fp32", return_probabilities=True)[1]
    assert np.abs(alone[1] - result.probabilities[9]).max() > 1e-4


def test_tiled_equals_untiled_in_3d():
    volume = _volume((24, 40, 56), seed=2)
    model = _conv_3d(kernel=3)
    whole = predict(model, volume, device="cpu", precision="fp32", return_probabilities=True)[1]
    tiled = predict(model, volume, device="cpu", precision="fp32", return_probabilities=True, tile=16,
                    overlap=0.5)[1]
    assert whole.std() > 5e-3  # a misplaced or wrongly weighted tile would be off by about this much
    assert np.abs(whole - tiled).max() < 1e-4


def test_tiles_blend_by_distance_on_the_volumes_faces_too():
    """A tile's outermost voxels (wrong by the network's padding) weigh ~1e-3 of a neighbour's centre on
    every axis, the faces included, so even a steep network stays within ~1e-3 of untiled (MONAI's
    map, floored as a whole, averages the faces' tiles alike: 0.3 off here)."""
    from monai.inferers import sliding_window_inference

    volume = _volume((24, 40, 56), seed=2)
    model = _conv_3d(kernel=3, gain=20.0)
    whole = predict(model, volume, device="cpu", precision="fp32", return_probabilities=True)[1]
    tiled = predict(model, volume, device="cpu", precision="fp32", return_probabilities=True, tile=16,
                    overlap=0.5)[1]
    assert whole.std() > 0.1 and np.abs(whole - tiled).max() < 3e-3
    x = torch.from_numpy(volume.astype(np.float32))[None, None]
    with torch.inference_mode():
        net = model.network
        monai = sliding_window_inference(x, (16, 16, 16), 8, net, overlap=0.5, mode="gaussian")
        assert (torch.sigmoid(net(x)) - torch.sigmoid(monai)).abs().max() > 0.1


def test_tiled_unet_agrees_with_one_window(unet):
    volume = _volume((32, 48, 48), seed=3)
    whole_labels, whole = predict(unet, volume, device="cpu", precision="fp32", return_probabilities=True)
    tiled_labels, tiled = predict(unet, volume, device="cpu", precision="fp32", return_probabilities=True,
                                  tile=32, overlap=0.5)
    # the network's padding at the tiles' borders differs a little, where the untiled network sees context
    assert whole.std() > 0.01 and np.abs(whole - tiled).mean() < 0.02 * whole.std()
    assert (whole_labels == tiled_labels).mean() > 0.99


def test_small_and_colour_volumes(unet):
    tiny = _volume((3, 9, 11), seed=4)  # smaller than the tile and the network's multiple: padded inside
    assert predict(unet, tiny, device="cpu").shape == tiny.shape
    volume = _volume((8, 32, 32), seed=5)
    gray = predict(unet, volume, device="cpu", precision="fp32", return_probabilities=True)[1]
    colour = np.stack([volume] * 3, axis=-1)
    assert np.abs(predict(unet, colour, device="cpu", precision="fp32", return_probabilities=True)[1]
                  - gray).max() < 1e-5  # colour to a gray model: the channels' mean
    rgb_model = _unet_3d(in_channels=3)
    assert predict(rgb_model, colour, device="cpu").shape == volume.shape


@pytest.mark.parametrize("image, message", [
    (np.zeros((32, 32), np.uint8), r"image of shape \(32, 32\) is a 2D image but the model is 3D"),
    (np.zeros((32, 32, 3), np.uint8), r"is a colour 2D image but the model is 3D"),
    (np.zeros((1, 32, 32), np.uint8), r"volume of shape \(1, 32, 32\) has 1 slice; a 3D model needs at least 2"),
])
def test_bad_inputs_for_a_3d_model_are_one_line(unet, image, message):
    with pytest.raises(UserError, match=message) as error:
        predict(unet, image, device="cpu")
    assert "\n" not in str(error.value)


def test_tta_and_uncertainty_views_in_3d(unet):
    volume = _volume((16, 32, 32), seed=6)
    counts = {}
    for name, options in {"plain": {}, "tta": {"tta": True}, "uncertainty": {"uncertainty": True}}.items():
        events = []
        result = drain(predict_steps(unet, volume, device="cpu", precision="fp32", **options), events.append)
        counts[name] = events[-1].total
        assert result.labels.shape == volume.shape
    assert counts["tta"] == counts["uncertainty"] == 8 * counts["plain"]
    assert result.uncertainty.shape == volume.shape and result.uncertainty.max() > 1e-4


def test_uncertainty_is_zero_for_a_network_blind_to_turns_and_flips():
    model = _conv_3d(kernel=1)  # sees each voxel alone
    volume = _volume((10, 24, 20), seed=7)
    labels, spread = predict(model, volume, device="cpu", precision="fp32", uncertainty=True)
    assert spread.shape == volume.shape and spread.max() < 1e-6
    assert np.array_equal(labels, predict(model, volume, device="cpu", precision="fp32"))
    _, tta = predict(model, volume, device="cpu", precision="fp32", tta=True, return_probabilities=True)
    _, plain = predict(model, volume, device="cpu", precision="fp32", return_probabilities=True)
    np.testing.assert_allclose(tta, plain, atol=1e-6)


def test_anisotropic_models_use_flips_not_turns_for_uncertainty(unet, monkeypatch):
    from napari_unet_seg import inference

    seen = []
    original = inference.views
    monkeypatch.setattr(inference, "views", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    anisotropic = _unet_3d(spacing=[1.0, 1.0, 2.0])
    predict(anisotropic, _volume((8, 32, 32)), device="cpu", uncertainty=True)
    assert seen[-1] == inference.FLIPS_3D
    predict(unet, _volume((8, 32, 32)), device="cpu", uncertainty=True)
    assert seen[-1] == inference.TURNS_3D


class _Reads:
    """An array-like that records every region read from it (as zarr or dask would be read)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim, self.reads = array, array.shape, array.dtype, array.ndim, []

    def __getitem__(self, key):
        part = self.array[key]
        self.reads.append(part.size)
        return part


def test_large_volumes_are_predicted_block_by_block_like_whole(monkeypatch):
    from napari_unet_seg import tiling, volume_inference

    volume = _volume((24, 40, 56), seed=8)
    model = _conv_3d(kernel=3, gain=5.0)
    monkeypatch.setattr(volume_inference, "STATS_SAMPLE", volume.size // 8)  # the range from a subsample
    whole = predict(model, volume, device="cpu", precision="fp32", return_probabilities=True)[1]
    monkeypatch.setitem(tiling.BLOCK_3D, "cpu", 16 * 20 * 28)  # 2 x 2 x 2 blocks
    monkeypatch.setattr(volume_inference, "BLOCK_HALO_3D", 2)  # more than the network's reach (1 voxel)
    reads = _Reads(volume)
    events = []
    result = drain(predict_steps(model, reads, device="cpu", precision="fp32", return_probabilities=True),
                   events.append)
    assert len({e.done for e in events}) >= 8 and events[-1].done == events[-1].total  # progress per block
    np.testing.assert_allclose(result.probabilities, whole, atol=1e-6)
    assert max(reads.reads) < volume.size  # never read whole: blocks, and the range from a subsample
    assert sum(reads.reads) < 3 * volume.size


def test_block_by_block_unet_agrees_with_whole(unet, monkeypatch):
    from napari_unet_seg import tiling

    volume = _volume((32, 64, 64), seed=9)
    labels, whole = predict(unet, volume, device="cpu", precision="fp32", return_probabilities=True)
    monkeypatch.setitem(tiling.BLOCK_3D, "cpu", 32 * 32 * 32)
    blocked_labels, blocked = predict(unet, volume, device="cpu", precision="fp32", return_probabilities=True)
    assert np.abs(blocked - whole).mean() < 0.02 * whole.std() and (blocked_labels == labels).mean() > 0.99


def test_the_range_of_a_large_volume_comes_from_a_strided_subsample(monkeypatch):
    from napari_unet_seg import volume_inference
    from napari_unet_seg.normalization import intensity_range

    volume = _volume((20, 40, 48), seed=10)
    model = _conv_3d()
    model.normalization = default_normalization("percentile")
    assert volume_inference.volume_range(volume, model, False) == intensity_range(volume[None], model.normalization)
    monkeypatch.setattr(volume_inference, "STATS_SAMPLE", volume.size // 8)  # a step of 2 along each axis
    reads = _Reads(volume)
    got = volume_inference.volume_range(reads, model, False)
    assert reads.reads == [volume.size // 8]
    assert got == intensity_range(volume[None, ::2, ::2, ::2], model.normalization)


def test_dask_and_zarr_inputs_equal_numpy(unet):
    da = pytest.importorskip("dask.array")
    volume = _volume((16, 40, 40), seed=11)
    expected = predict(unet, volume, device="cpu")
    assert np.array_equal(predict(unet, da.from_array(volume, chunks=(8, 16, 16)), device="cpu"), expected)
    zarr = pytest.importorskip("zarr")
    stored = zarr.zeros(volume.shape, chunks=(8, 16, 16), dtype=volume.dtype)
    stored[:] = volume
    assert np.array_equal(predict(unet, stored, device="cpu"), expected)


def test_labels_are_written_into_out(unet, tmp_path, monkeypatch):
    from napari_unet_seg import tiling

    volume = _volume((16, 40, 40), seed=12)
    expected = predict(unet, volume, device="cpu")
    monkeypatch.setitem(tiling.BLOCK_3D, "cpu", 8 * 40 * 40)
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint8, shape=volume.shape)
    result = drain(predict_steps(unet, volume, device="cpu", out=out))
    assert result.labels is out
    assert (np.load(tmp_path / "labels.npy") == expected).mean() > 0.99
    with pytest.raises(UserError, match=r"out array of shape \(16, 40, 40\) and dtype int32 does not fit"):
        predict(unet, volume, device="cpu", out=np.zeros(volume.shape, np.int32))


def test_cancel_and_out_of_memory_in_3d(unet, monkeypatch):
    from napari_unet_seg import inference
    from napari_unet_seg.errors import JobCancelled
    from napari_unet_seg.events import Message

    volume = _volume((16, 48, 48), seed=13)
    with pytest.raises(JobCancelled):
        predict(unet, volume, device="cpu", cancel=lambda: True)
    expected = predict(unet, volume, device="cpu", tile=32, precision="fp32")
    model = _unet_3d()  # a model of its own: its network's forward is patched
    forward, sizes = model.network.forward, []

    def flaky(x):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(x.shape[0])
        return forward(x)

    monkeypatch.setattr(model.network, "forward", flaky)
    events = []
    result = drain(predict_steps(model, volume, device="cpu", tile=32, batch_size=4, precision="fp32"),
                   events.append)
    assert [e.text for e in events if isinstance(e, Message)] == ["out of GPU memory: tile batch size lowered to 1"]
    assert set(sizes) == {1} and np.array_equal(result.labels, expected)
    monkeypatch.setattr(model.network, "forward", lambda x: flaky(torch.cat([x, x])))
    inference._COPIES.clear()
    with pytest.raises(UserError, match="out of GPU memory even for one tile of 16x32x32 voxels"):
        predict(model, volume, device="cpu", tile=32)


def test_a_2d_model_writes_a_stack_into_out():
    model = SegmentationModel(torch.nn.Conv2d(1, 1, 3, padding=1).eval(), {"name": "conv", "kwargs": {}}, 1, 2,
                              default_normalization("minmax"))
    stack = _volume((3, 32, 40), seed=14)
    out = np.zeros(stack.shape, np.uint8)
    assert predict(model, stack, device="cpu", out=out) is out
    for z in range(3):
        np.testing.assert_array_equal(out[z], predict(model, stack[z], device="cpu"))
