import numpy as np
import pytest

from napari_unet_seg.errors import JobCancelled, UserError
from napari_unet_seg.events import Message, Tiles, drain
from napari_unet_seg.inference import postprocess, predict, predict_steps
from napari_unet_seg.model_file import load_model
from napari_unet_seg.sample_data import synthetic_pair


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model)


def test_predicts_the_discs(model):
    image, mask = synthetic_pair((96, 96), seed=123)
    labels = predict(model, image, device="cpu")
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1}
    assert (labels == (mask > 0)).mean() > 0.85


def test_tiled_equals_untiled(model):
    image, _ = synthetic_pair((200, 150), seed=7, objects=12)
    whole, p_whole = predict(model, image, tile=256, device="cpu", return_probabilities=True)
    tiled, p_tiled = predict(model, image, tile=64, overlap=0.5, device="cpu", return_probabilities=True)
    assert p_whole.shape == p_tiled.shape == image.shape and p_whole.dtype == np.float32
    assert np.abs(p_whole - p_tiled).mean() < 0.02
    assert (whole == tiled).mean() > 0.99


def test_stack_is_predicted_slice_by_slice_and_reports_progress(model):
    slices = [synthetic_pair((64, 80), seed=s)[0] for s in range(3)]
    stack = np.stack(slices)
    steps = predict_steps(model, stack, device="cpu", tile=64)
    events = []
    result = drain(steps, events.append)
    assert all(isinstance(e, Tiles) for e in events) and events[-1].done == events[-1].total
    assert result.labels.shape == stack.shape
    for z, image in enumerate(slices):
        assert np.array_equal(result.labels[z], predict(model, image, device="cpu", tile=64))


def test_dask_and_path_and_odd_inputs(model, tiny_model):
    da = pytest.importorskip("dask.array")
    image, _ = synthetic_pair((70, 90), seed=3)
    expected = predict(model, image, device="cpu")
    assert np.array_equal(predict(str(tiny_model), da.from_array(image, chunks=32), device="cpu"), expected)
    assert predict(model, np.array([[5]], np.uint16), device="cpu").shape == (1, 1)
    rgb = np.stack([image] * 3, axis=-1)
    assert predict(model, rgb, device="cpu").shape == image.shape  # colour to a gray model: converted
    nan_image = image.astype(np.float32)
    nan_image[0, :5] = np.nan
    assert predict(model, nan_image, device="cpu").shape == image.shape
    with pytest.raises(UserError, match="expected 2D"):
        predict(model, np.zeros((2, 2, 16, 16)), device="cpu")
    with pytest.raises(UserError, match="threshold"):
        predict(model, image, threshold=1.5)


def test_threshold_tta_and_probabilities(model):
    image, _ = synthetic_pair((64, 64), seed=9)
    labels, probs = predict(model, image, device="cpu", return_probabilities=True)
    assert np.array_equal(labels, (probs > 0.5).astype(np.uint8))
    strict = predict(model, image, device="cpu", threshold=0.95)
    assert strict.sum() <= labels.sum()
    tta = predict(model, image, device="cpu", tta=True)
    assert (tta == labels).mean() > 0.95


def test_cancel_stops_prediction(model):
    image, _ = synthetic_pair((64, 64), seed=9)
    with pytest.raises(JobCancelled):
        predict(model, image, device="cpu", cancel=lambda: True)


def test_postprocess_min_size_and_holes():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:10, 2:10] = 1
    labels[5, 5] = 0  # a hole
    labels[15, 15] = 1  # a speck
    out = postprocess(labels, min_size=4, fill_holes=True)
    assert out[15, 15] == 0 and out[5, 5] == 1 and out[2:10, 2:10].all()
    assert np.array_equal(postprocess(labels), labels)


def test_out_of_memory_halves_the_tile_batch_and_goes_on(tiny_model, monkeypatch):
    import torch

    model = load_model(tiny_model)
    stack = np.stack([synthetic_pair((96, 96), seed=s)[0] for s in range(2)])
    expected = predict(model, stack, device="cpu", tile=32)
    forward, sizes = model.network.forward, []

    def flaky(x):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(x.shape[0])
        return forward(x)

    monkeypatch.setattr(model.network, "forward", flaky)
    steps = predict_steps(model, stack, device="cpu", tile=32, batch_size=4)
    events = []
    result = drain(steps, events.append)
    messages = [e for e in events if isinstance(e, Message)]
    assert [(m.text, m.level) for m in messages] == [("out of GPU memory: tile batch size lowered to 1", "warning")]
    assert set(sizes) == {1} and events[-1] == Tiles(events[-1].total, events[-1].total)
    assert (result.labels == expected).mean() > 0.999
    with pytest.warns(UserWarning, match="out of GPU memory: tile batch size lowered to 1"):
        assert predict(model, stack[0], device="cpu", tile=32).shape == (96, 96)
    monkeypatch.setattr(model.network, "forward", lambda x: flaky(torch.cat([x, x])))
    with pytest.raises(UserError, match="out of GPU memory even for one tile of 32x32 pixels"):
        predict(model, stack[0], device="cpu", tile=32)


def test_resize_models_predict_at_their_training_scale(tmp_path):
    import torch
    from skimage.transform import resize

    from napari_unet_seg.dataset import samples_from_arrays
    from napari_unet_seg.inference import probabilities
    from napari_unet_seg.training import train

    pairs = [synthetic_pair((90, 120), seed=s) for s in range(4)]
    result = train(arrays=pairs, out=tmp_path / "r", epochs=2, resize=48, batch_size=2, width=0.25,
                   augment="none", device="cpu")
    model = load_model(result.best)
    image, mask = synthetic_pair((90, 120), seed=11)
    labels, probs = predict(model, image, device="cpu", return_probabilities=True)
    assert labels.shape == probs.shape == (90, 120)
    # The same as the training-time view: the image prepared at 48x48, predicted, scaled back.
    (sample,), _ = samples_from_arrays([(image, mask)], classes=2, normalization=model.normalization, resize=48)
    with torch.no_grad():
        small = probabilities(model.network, torch.from_numpy(sample.image.astype("float32")), num_classes=2,
                              tile=48)[0].numpy()
    expected = resize(small, (90, 120), order=1) > 0.5
    assert (labels == expected).mean() > 0.97


@pytest.mark.parametrize("shape, device, expected", [
    ((300, 200), "cpu", ((300, 200), 69)),        # whole image in one tile on the CPU
    ((2048, 2048), "cpu", ((2048, 2048), 1)),
    ((4096, 1000), "cpu", ((1664, 1000), 2)),      # three windows of 1664 cover 4096 with overlap 0.25
    ((4096, 4096), "cuda", ((1024, 1024), 8)),
])
def test_auto_tiling_covers_with_few_windows(shape, device, expected):
    import torch

    from napari_unet_seg.inference import auto_tiling

    roi, batch = auto_tiling(shape, torch.device(device), minimum=256, overlap=0.25)
    assert (roi, batch) == expected
    assert all(r % 32 == 0 or r == s for r, s in zip(roi, shape))


def test_reduced_precision_keeps_the_masks(model):
    image, _ = synthetic_pair((128, 128), seed=5)
    exact = predict(model, image, device="cpu", precision="fp32")
    for precision in ("auto", "bf16"):
        assert (predict(model, image, device="cpu", precision=precision) == exact).mean() > 0.995
    with pytest.raises(UserError, match="precision 'fp8'"):
        predict(model, image, device="cpu", precision="fp8")
