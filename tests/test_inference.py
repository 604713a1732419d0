import warnings

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
    with warnings.catch_warnings(record=True) as caught:  # gray stored as RGB: converted without a word
        warnings.simplefilter("always")
        assert predict(model, rgb, device="cpu").shape == image.shape
    assert not [w for w in caught if "colour" in str(w.message)]  # (old torch warns about MONAI's indexing)
    rgb[..., 2] = 255 - rgb[..., 2]
    with pytest.warns(UserWarning, match="a colour image for a model trained on grayscale images: segmented as gray"):
        assert predict(model, rgb, device="cpu").shape == image.shape
    for channels in (1, 2):  # a channel axis last is not a stack of 1-2 pixel wide slices
        with pytest.raises(UserError, match=rf"last axis looks like {channels} channel\(s\), not a stack"):
            predict(model, np.zeros((32, 32, channels), np.float32), device="cpu")
    assert predict(model, np.zeros((3, 32, 32), np.float32), device="cpu").shape == (3, 32, 32)
    nan_image = image.astype(np.float32)
    nan_image[0, :5] = np.nan
    assert predict(model, nan_image, device="cpu").shape == image.shape
    with pytest.raises(UserError, match="expected 2D"):
        predict(model, np.zeros((2, 2, 16, 16)), device="cpu")
    with pytest.raises(UserError, match="threshold"):
        predict(model, image, threshold=1.5)


def test_pixels_of_another_size_than_the_models_are_named_in_a_warning(tiny_model):
    from napari_unet_seg.inference import spacing_mismatch
    from napari_unet_seg.model_file import load_model

    assert spacing_mismatch([0.005] * 3, [0.005, 0.006, 0.0045]) is None  # within 1.5x
    assert spacing_mismatch(None, [1, 1]) is None and spacing_mismatch([1, 1], None) is None
    assert "10.0x coarser along Z" in spacing_mismatch([0.005] * 3, [0.05, 0.005, 0.005])
    assert "2.0x finer along Y" in spacing_mismatch([0.5, 0.5], [1, 0.25, 0.5])  # a 2D model on a stack's planes
    model = load_model(tiny_model)
    model.config["spacing"] = [0.65, 0.65]
    image, _ = synthetic_pair((48, 48), seed=1)
    with pytest.warns(UserWarning, match=r"pixels of 300 x 300 nm \(Y x X\), the model was trained on 650 x 650 nm: "
                                         r"2.2x finer in every axis, so objects look larger"):
        predict(model, image, device="cpu", spacing=[0.3, 0.3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict(model, image, device="cpu", spacing=[0.6, 0.7])
    assert not [w for w in caught if "trained on" in str(w.message)]
    from napari_unet_seg import predict as checked_predict

    with pytest.raises(UserError, match=r"^predict: spacing must be > 0, got 0"):
        checked_predict(model, image, device="cpu", spacing=[0, 1])


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
    with pytest.raises(JobCancelled):  # predict without on_event: the network runs in the calling thread
        predict(model, image, device="cpu", cancel=lambda: True)
    with pytest.raises(JobCancelled):
        predict(model, image, device="cpu", cancel=lambda: True, on_event=lambda event: None)


def test_without_progress_the_network_runs_in_the_calling_thread(model):
    import threading

    from napari_unet_seg.inference import working_copy

    stack = np.stack([synthetic_pair((64, 80), seed=s)[0] for s in range(3)])
    threads, copy = [], working_copy(model, "cpu")  # the network predict runs as it is
    copy.network.register_forward_pre_hook(lambda module, args: threads.append(threading.get_ident()))
    runs = {}
    for progress in (True, False):
        events, threads[:] = [], []
        runs[progress] = drain(predict_steps(copy, stack, device="cpu", tile=32, progress=progress),
                               events.append).labels, events, set(threads)
    (threaded, events_threaded, in_threads), (inline, events_inline, in_caller) = runs[True], runs[False]
    assert np.array_equal(threaded, inline)
    assert in_caller == {threading.get_ident()} and threading.get_ident() not in in_threads
    total = events_inline[-1].total
    assert [e.done for e in events_inline] == [total * z // 3 for z in (1, 2, 3)]  # one Tiles per slice
    assert len(events_threaded) >= len(events_inline)


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

    import napari_unet_seg.inference as inference

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
    monkeypatch.setattr(inference, "_COPIES", type(inference._COPIES)())  # copy the patched network anew
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
    inference._COPIES.clear()
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
    labels, probs = predict(model, image, device="cpu", return_probabilities=True, threshold=0.5,
                            keep_largest=False, fill_holes=False, tta=False)  # plain, not the run's choice
    assert labels.shape == probs.shape == (90, 120)
    # The same as the training-time view: the image prepared at 48x48, predicted, scaled back.
    (sample,), _ = samples_from_arrays([(image, mask)], classes=2, normalization=model.normalization, resize=48)
    with torch.no_grad():
        small = probabilities(model.network, torch.from_numpy(sample.image.astype("float32")), num_classes=2,
                              tile=48)[0].numpy()
    expected = resize(small, (90, 120), order=1) > 0.5
    assert (labels == expected).mean() > 0.97


def test_large_planes_are_predicted_in_blocks_like_whole(model, monkeypatch):
    from napari_unet_seg import inference, tiling

    image, _ = synthetic_pair((384, 320), seed=9, objects=16)
    whole, whole_probs = predict(model, image, device="cpu", precision="fp32", return_probabilities=True)
    monkeypatch.setitem(tiling.BLOCK, "cpu", 128)
    monkeypatch.setattr(inference, "BLOCK_HALO", 64)
    events = list(inference.predict_steps(model, image, device="cpu", precision="fp32"))
    assert len(events) > 4  # progress after each of the 3x3 blocks
    assert events[-1].done == events[-1].total
    blocked, blocked_probs = predict(model, image, device="cpu", precision="fp32", return_probabilities=True)
    # as with tiles (test_tiled_equals_untiled), the borders' padding differs a little
    assert np.abs(blocked_probs - whole_probs).mean() < 0.02
    assert (blocked == whole).mean() > 0.99


def test_reduced_precision_keeps_the_masks(model):
    image, _ = synthetic_pair((128, 128), seed=5)
    exact = predict(model, image, device="cpu", precision="fp32")
    for precision in ("auto", "bf16"):
        assert (predict(model, image, device="cpu", precision=precision) == exact).mean() > 0.995
    with pytest.raises(UserError, match="precision 'fp8'"):
        predict(model, image, device="cpu", precision="fp8")


def _eight_views(model, image, **options):
    """Probabilities of the image turned and flipped the eight ways, each turned back: ``(8, ...)``."""
    out = []
    for flip in (False, True):
        for k in range(4):
            view = np.ascontiguousarray(np.rot90(image[:, ::-1] if flip else image, k))
            _, probs = predict(model, view, device="cpu", precision="fp32", return_probabilities=True, **options)
            probs = np.rot90(probs, -k, axes=(-2, -1))
            out.append(probs[..., ::-1] if flip else probs)
    return np.stack(out)


@pytest.mark.parametrize("tile", [None, 32])  # one whole non-square window, or square tiles
def test_uncertainty_is_the_spread_of_the_eight_views(model, tile):
    image, _ = synthetic_pair((72, 100), seed=4)
    labels, probs, spread = predict(model, image, device="cpu", precision="fp32", tile=tile, overlap=0.5,
                                    uncertainty=True, return_probabilities=True)
    assert labels.shape == probs.shape == spread.shape == image.shape and spread.dtype == np.float32
    views = _eight_views(model, image, tile=tile, overlap=0.5)
    np.testing.assert_allclose(probs, views.mean(axis=0), atol=1e-5)
    np.testing.assert_array_equal(labels, (views.mean(axis=0) > 0.5).astype(np.uint8))
    np.testing.assert_allclose(spread, views.std(axis=0), atol=1e-5)
    assert spread.min() >= 0 and spread.max() > 0.01  # a trained U-Net is not symmetric: the views differ
    only_labels, only_spread = predict(model, image, device="cpu", precision="fp32", tile=tile, overlap=0.5,
                                       uncertainty=True)
    assert np.array_equal(only_labels, labels) and np.array_equal(only_spread, spread)


def _pixelwise_model(classes=2, kernel=1):
    import torch

    from napari_unet_seg.model_file import SegmentationModel
    from napari_unet_seg.normalization import default_normalization

    torch.manual_seed(0)
    out = 1 if classes == 2 else classes
    network = torch.nn.Conv2d(1, out, kernel, padding=kernel // 2).eval()
    return SegmentationModel(network=network, architecture={"name": "conv", "kwargs": {}}, in_channels=1,
                             num_classes=classes, normalization=default_normalization("minmax"))


def test_uncertainty_is_zero_for_a_network_blind_to_rotations_and_flips():
    image, _ = synthetic_pair((40, 70), seed=2)
    model = _pixelwise_model()  # a 1x1 convolution sees each pixel alone
    labels, spread = predict(model, image, device="cpu", precision="fp32", uncertainty=True)
    assert spread.shape == image.shape and spread.max() < 1e-6
    assert np.array_equal(labels, predict(model, image, device="cpu", precision="fp32"))


def test_multi_class_uncertainty_is_the_mean_of_the_class_spreads():
    image, _ = synthetic_pair((40, 56), seed=6)
    model = _pixelwise_model(classes=3, kernel=3)
    labels, probs, spread = predict(model, image, device="cpu", precision="fp32", uncertainty=True,
                                    return_probabilities=True)
    views = _eight_views(model, image)
    assert probs.shape == (3, 40, 56) and spread.shape == labels.shape == (40, 56)
    np.testing.assert_allclose(spread, views.std(axis=0).mean(axis=0), atol=1e-5)
    assert spread.max() > 1e-3
    with pytest.raises(UserError, match="instances need a binary model, this one has 3 classes"):
        predict(model, image, device="cpu", instances="watershed")


def test_uncertainty_of_stacks_and_progress_counts(model):
    stack = np.stack([synthetic_pair((48, 64), seed=s)[0] for s in range(2)])
    counts = {}
    for name, options in {"plain": {}, "tta": {"tta": True}, "uncertainty": {"uncertainty": True}}.items():
        events = []
        result = drain(predict_steps(model, stack, device="cpu", tile=32, precision="fp32", **options),
                       events.append)
        assert events[-1].done == events[-1].total and all(isinstance(e, Tiles) for e in events)
        assert [e.done for e in events] == sorted({e.done for e in events})  # rising, never repeated
        assert {e.done for e in events} >= {events[-1].total // 2, events[-1].total}  # each slice's end
        counts[name] = events[-1].total
    assert counts["tta"] == 4 * counts["plain"] and counts["uncertainty"] == 8 * counts["plain"]
    assert result.uncertainty.shape == stack.shape and result.labels.dtype == np.uint8
    for z in range(2):
        _, spread = predict(model, stack[z], device="cpu", tile=32, precision="fp32", uncertainty=True)
        np.testing.assert_array_equal(result.uncertainty[z], spread)


def test_instances_number_the_objects(model):
    from skimage.measure import label

    image, _ = synthetic_pair((96, 96), seed=123)
    plain = predict(model, image, device="cpu")
    components = predict(model, image, device="cpu", instances="components")
    assert components.dtype == np.int32 and np.array_equal(components, label(plain))
    split = predict(model, image, device="cpu", instances="watershed", min_distance=3)
    assert split.dtype == np.int32 and np.array_equal(split > 0, plain > 0)
    assert split.max() >= components.max()
    stack = predict(model, np.stack([image, image]), device="cpu", instances="watershed", min_distance=3)
    assert np.array_equal(stack[0], split) and np.array_equal(stack[1][stack[1] > 0], split[split > 0] + split.max())
    with pytest.raises(UserError, match="instances 'cells' is unknown"):
        predict(model, image, device="cpu", instances="cells")


def test_predict_never_changes_the_callers_model(model):
    import torch

    image, _ = synthetic_pair((64, 64), seed=2)
    model.network.train()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    formats = [p.is_contiguous() for p in model.network.parameters()]
    predict(model, image, device="cpu", tta=True)
    assert model.network.training  # still in train mode: batch norm not switched under its owner
    assert [p.is_contiguous() for p in model.network.parameters()] == formats  # not made channels-last
    assert all(p.device.type == "cpu" for p in model.network.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.network.state_dict().items())
    model.network.eval()


def test_progress_comes_per_group_of_tiles_and_a_cancelled_predict_ends_short(model, monkeypatch):
    import threading
    import time

    import napari_unet_seg.inference as inference

    monkeypatch.setattr(inference, "PROGRESS_INTERVAL", 0.0)
    image, _ = synthetic_pair((200, 200), seed=4, objects=10)
    events = []
    drain(predict_steps(model, image, device="cpu"), events.append)  # one 200x200 tile: steps within it
    assert len(events) >= 5 and events[-1].done == events[-1].total == inference.TILE_STEPS
    assert [e.done for e in events] == sorted({e.done for e in events})
    cancel, seen = threading.Event(), []
    steps = predict_steps(model, image, device="cpu", tta=True, tile=64, cancel=cancel)
    with pytest.raises(JobCancelled):
        for event in steps:
            seen.append(event)
            if len(seen) == 3:
                cancel.set()
    assert seen[-1].done < seen[-1].total  # a cancelled prediction never reports 100 %
    monkeypatch.setattr(inference, "PROGRESS_INTERVAL", 0.1)
    began, times = time.perf_counter(), []
    drain(predict_steps(model, np.tile(image, (3, 3)), device="cpu", tile=64, uncertainty=True),
          lambda event: times.append(time.perf_counter()))
    gaps = np.diff([began, *times])
    assert len(times) > 3 and gaps.max() < 1.0, gaps  # at least once a second (measured here: ~0.1 s)


def test_a_working_copy_predicts_like_its_model_without_another_copy(model, monkeypatch):
    import napari_unet_seg.inference as inference

    image, _ = synthetic_pair((64, 64), seed=8)
    work = inference.working_copy(model, "cpu")
    assert work.network is not model.network and not work.network.training
    copies, real = [], inference.inference_network
    monkeypatch.setattr(inference, "inference_network", lambda net, device: copies.append(net) or real(net, device))
    monkeypatch.setattr(inference, "_COPIES", type(inference._COPIES)())  # no copy kept from other tests
    assert np.array_equal(predict(work, image, device="cpu"), predict(model, image, device="cpu"))
    assert copies == [model.network]  # the model's network was copied, the working copy was not


def test_predict_keeps_its_copy_until_the_weights_change(model, monkeypatch):
    import torch

    import napari_unet_seg.inference as inference

    image, _ = synthetic_pair((64, 64), seed=9)
    copies, real = [], inference.inference_network
    monkeypatch.setattr(inference, "inference_network", lambda net, device: copies.append(net) or real(net, device))
    monkeypatch.setattr(inference, "_COPIES", type(inference._COPIES)())
    first = predict(model, image, device="cpu")
    assert np.array_equal(predict(model, image, device="cpu"), first) and len(copies) == 1  # the copy was kept
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    try:
        with torch.no_grad():
            for parameter in model.network.parameters():
                parameter.mul_(-1.0)  # new weights, changed in place: the kept copy is stale
        changed = predict(model, image, device="cpu")
        assert len(copies) == 2 and not np.array_equal(changed, first)
    finally:
        model.network.load_state_dict(before)
    assert np.array_equal(predict(model, image, device="cpu"), first) and len(copies) == 3
