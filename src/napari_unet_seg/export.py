"""Export a model to TorchScript, ONNX or a bioimage.io model package; every export is checked against PyTorch.

Every exported network computes what ``model.network`` computes:

- input ``(N, C, H, W)`` float32, or ``(N, C, Z, Y, X)`` for a 3D model: the image **already normalized** as
  the model was trained (:func:`~napari_unet_seg.normalization.normalize`; by default per image or volume,
  percentile 1 -> 0 and 99.8 -> 1);
- output ``(N, K, H, W)`` (``(N, K, Z, Y, X)``) float32 **logits**: ``sigmoid`` gives the foreground
  probability of a binary model (K = 1), ``softmax`` over K the class probabilities of a multi-class model.

Sizes: TorchScript keeps :class:`~napari_unet_seg.models.PadToMultiple`'s logic, so it takes any size. The
ONNX graph reflect-pads every spatial axis up to its multiple ``m`` of the network (one per axis: a 3D network
for anisotropic voxels pools its coarse axis less) and crops back, which is what PyTorch does for sizes above
``m`` (17 and more for the U-Nets, 33 and more for SegNet); smaller inputs are refused by the ONNX runtime, so
the caller pads them (:func:`min_sizes`).

This module holds :func:`export_model` (every format), TorchScript and ONNX export and the comparison with
PyTorch; the bioimage.io package is made in :mod:`~napari_unet_seg.bioimageio` on top of them.

A file is written next to its target and moved into place only after its check passed: a failed export leaves
no file behind. The engine is Qt-free; progress lines go to ``on_message``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .image_io import atomic_write
from .model_file import SegmentationModel, load_model
from .models import PadToMultiple
from .normalization import normalize, to_channels_first

__all__ = ["FORMATS", "ONNX_OPSET", "TOLERANCE", "ExportError", "export_model", "export_torchscript", "export_onnx",
           "min_size", "min_sizes"]

FORMATS = ("torchscript", "onnx", "bioimageio")
ONNX_OPSET = 18
#: Largest accepted ``|exported - pytorch|``, relative to ``max(1, max |pytorch|)`` (float32 logits).
TOLERANCE = 1e-4
#: Largest side of the test image (cropped to it): 2D images, 3D volumes (63^3: a quarter million voxels).
_LARGEST = {2: 255, 3: 63}
#: The names of the spatial axes in ONNX graphs and messages.
_AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}

_INSTALL = {"onnx": "pip install onnx onnxscript onnxruntime", "bioimageio": "pip install bioimageio.spec"}


class ExportError(UserError):
    """An export that could not be made, or whose output differs from PyTorch's; the message says what to try."""


Messages = Callable[[str], None] | None


def multiples(model: SegmentationModel) -> list[int]:
    """The size each spatial axis of the network is padded to a multiple of, one per axis (slowest first)."""
    values = [int(m) for m in model.network.multiples]
    return values * model.spatial_dims if len(values) == 1 else values


def min_sizes(model: SegmentationModel) -> list[int]:
    """The smallest size of each spatial axis the ONNX graph (and the bioimage.io package) takes: its multiple + 1."""
    return [m + 1 for m in multiples(model)]


def min_size(model: SegmentationModel) -> int:
    """The smallest side the ONNX graph takes on every axis (the largest of :func:`min_sizes`)."""
    return max(min_sizes(model))


# --------------------------------------------------------------------------------------------- entry point


def export_model(model: SegmentationModel | str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                 check: bool = True, overwrite: bool = False, test_image: np.ndarray | None = None,
                 authors: Sequence[str] | None = None, license: str | None = None,
                 on_message: Messages = None) -> Path:
    """Export ``model`` (object, file or shipped name) as ``fmt`` (one of :data:`FORMATS`) to ``out``; return it.

    ``out`` is a file for ``torchscript`` (``.pt``) and ``onnx`` (``.onnx``), a folder or a ``.zip`` for
    ``bioimageio``. ``test_image`` (raw, ``(Y, X)`` or ``(Y, X, 3)``; for a 3D model ``(Z, Y, X)`` or
    ``(Z, Y, X, 3)``) is what the check runs on and what the package's test tensors are made of; by default the
    first training image, else a synthetic one (3D: the shipped EM volume).
    ``authors`` and ``license`` (an SPDX id) go into the bioimage.io package only.

    Raises:
        UserError: a bad format, an existing or unwritable ``out``, a missing optional package.
        ExportError: the export failed or its output differs from PyTorch's (nothing is left at ``out``).
    """
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if fmt != "bioimageio" and (authors or license):
        raise UserError("authors and license go into bioimage.io packages only; drop them or export to bioimageio")
    options = {"check": check, "overwrite": overwrite, "test_image": test_image, "on_message": on_message}
    if fmt == "torchscript":
        return export_torchscript(model, out, **options)
    if fmt == "onnx":
        return export_onnx(model, out, **options)
    from .bioimageio import export_bioimageio  # it builds on this module

    return export_bioimageio(model, out, authors=authors, license=license, **options)


def export_torchscript(model: SegmentationModel | str | os.PathLike, out: str | os.PathLike, *, check: bool = True,
                       overwrite: bool = False, test_image: np.ndarray | None = None,
                       on_message: Messages = None) -> Path:
    """Write ``torch.jit.script`` of the network to ``out`` (load it with ``torch.jit.load``); any size."""
    model = _load(model)
    target = _file_target(out, overwrite, model)
    inputs = _check_inputs(model, _test_image(model, test_image))
    return atomic_write(target, lambda tmp: _write_torchscript(model, Path(tmp), inputs, check, on_message))


def export_onnx(model: SegmentationModel | str | os.PathLike, out: str | os.PathLike, *, check: bool = True,
                overwrite: bool = False, test_image: np.ndarray | None = None, opset: int = ONNX_OPSET,
                on_message: Messages = None) -> Path:
    """Write an ONNX graph (opset ``opset`` >= 17; dynamic batch and spatial sizes) to ``out``."""
    _require("onnx", "onnxscript", "onnxruntime", what="exporting to ONNX")
    if opset < 17:
        raise UserError(f"ONNX opset {opset} is too old; use 17 or newer")
    model = _load(model)
    target = _file_target(out, overwrite, model)
    inputs = _check_inputs(model, _test_image(model, test_image))
    return atomic_write(target, lambda tmp: _write_onnx(model, Path(tmp), inputs, opset, check, on_message))


# --------------------------------------------------------------------------------------------- TorchScript


class _ScriptableSegNet(nn.Module):
    """SegNet's forward in a form TorchScript compiles, on the same modules (so the same weights), 2D or 3D.

    ``nn.MaxUnpool2d`` does not script in torch 2.13 (an internal assert) and SegNet keeps the pre-pool shapes
    in an untyped list, so this calls the functional pooling with typed lists instead, with each level's own
    kernel (they differ per axis and level in a 3D SegNet for anisotropic voxels).
    """

    def __init__(self, segnet: nn.Module) -> None:
        super().__init__()
        self.encoders = segnet.encoders
        self.decoders = nn.ModuleList(list(segnet.decoders)[::-1])  # in the order they run: deepest first
        self.head = segnet.head
        self.dims = 3 if isinstance(segnet.pools[0], nn.MaxPool3d) else 2
        self.kernels = [_per_axis(pool.kernel_size, self.dims) for pool in segnet.pools]
        self.strides = [_per_axis(pool.stride, self.dims) for pool in segnet.pools]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices: list[torch.Tensor] = []
        sizes: list[list[int]] = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            sizes.append(x.shape[2:])
            if self.dims == 3:
                x, index = F.max_pool3d_with_indices(x, self.kernels[level], self.strides[level])
            else:
                x, index = F.max_pool2d_with_indices(x, self.kernels[level], self.strides[level])
            indices.append(index)
        for level, decoder in enumerate(self.decoders):
            depth = len(indices) - 1 - level
            kernel, stride = self.kernels[depth], self.strides[depth]
            if self.dims == 3:
                x = F.max_unpool3d(x, indices[depth], kernel, stride, 0, sizes[depth])
            else:
                x = F.max_unpool2d(x, indices[depth], kernel, stride, 0, sizes[depth])
            x = decoder(x)
        return self.head(x)


def _per_axis(value: int | Sequence[int], dims: int) -> list[int]:
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]


def _scripted(model: SegmentationModel) -> torch.jit.ScriptModule:
    from .models.segnet import SegNet

    network = _cpu_copy(model)
    if isinstance(network.network, SegNet):
        network = PadToMultiple(_ScriptableSegNet(network.network), network.multiples).eval()
    try:
        with _quiet():
            return torch.jit.script(network)
    except Exception as error:  # TorchScript's compiler raises many types
        raise ExportError(f"TorchScript cannot compile {model.architecture['name']} "
                          f"({_first_line(error)}); export to onnx instead") from None


def _write_torchscript(model: SegmentationModel, path: Path, inputs: list[np.ndarray], check: bool,
                       on_message: Messages) -> None:
    scripted = _scripted(model)
    with _quiet():
        torch.jit.save(scripted, str(path))
    if check:
        with _quiet():
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return loaded(torch.from_numpy(batch)).numpy()

        _compare("TorchScript", model, run, inputs, on_message)


# --------------------------------------------------------------------------------------------- ONNX


class _PadCrop(nn.Module):
    """PadToMultiple for ONNX: reflect-pad each spatial axis up to a multiple of its ``multiples`` entry (two at
    least; an axis of multiple 1 is left alone), run, crop back.

    For sizes above the multiples this is exactly PadToMultiple. It has no branch on the sizes (PadToMultiple
    picks reflect or replicate padding), so torch.export keeps them symbolic. Smaller inputs make the reflect
    padding too wide and the ONNX runtime refuses them, rather than computing something else than PyTorch.
    """

    def __init__(self, network: nn.Module, multiples: Sequence[int]) -> None:
        super().__init__()
        self.network = network
        self.multiples = [int(m) for m in multiples]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [x.shape[2 + axis] for axis in range(len(self.multiples))]
        pads = []
        for size, m in zip(reversed(sizes), reversed(self.multiples)):  # F.pad takes the last axis first
            pads += [0, torch.sym_max((size + m - 1) // m * m, 2 * m) - size if m > 1 else 0]
        y = self.network(F.pad(x, pads, mode="reflect"))
        for axis, size in enumerate(sizes):
            y = y.narrow(2 + axis, 0, size)
        return y


def _write_onnx(model: SegmentationModel, path: Path, inputs: list[np.ndarray], opset: int, check: bool,
                on_message: Messages) -> None:
    import onnx

    network = _cpu_copy(model)
    wrapped = _PadCrop(network.network, multiples(model)).eval()
    example = torch.from_numpy(inputs[-1])  # odd sizes and a batch of 2: nothing gets specialized
    names = _AXIS_NAMES[model.spatial_dims]
    dims = torch.export.Dim
    shapes = {"x": {0: dims("batch"), **{2 + axis: dims(name, min=least)
                                         for axis, (name, least) in enumerate(zip(names, min_sizes(model)))}}}
    if on_message:
        on_message("converting to ONNX (torch.export; takes a while)")
    try:
        with _quiet():
            program = torch.onnx.export(wrapped, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["logits"], dynamic_shapes=shapes,
                                        verbose=False)
            program.save(str(path))
    except Exception as error:  # the exporter raises many types
        raise ExportError(f"ONNX export of {model.architecture['name']} failed ({_first_line(error)}); "
                          "export to torchscript instead") from None
    graph = onnx.load(str(path))
    for value in graph.graph.output:  # name the output sizes like the input's (not 'Min(height, ...)')
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", None, *names)):
            if name:
                dim.dim_param = name
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    if check:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        _compare("ONNX", model, lambda batch: session.run(None, {"input": batch})[0], inputs, on_message)


# --------------------------------------------------------------------------------------------- checks


def _compare(what: str, model: SegmentationModel, run: Callable[[np.ndarray], np.ndarray],
             checks: list[np.ndarray], on_message: Messages) -> None:
    """Raise ExportError unless ``run`` gives PyTorch's output on every input of ``checks``.

    An input on which PyTorch's float32 output itself is farther than the tolerance from its float64 output
    (a near-tie of two values in a max-pooling window, which SegNet's unpooling turns into a moved value)
    cannot judge the export; it is left out, and said so. At least one input must decide."""
    network = _cpu_copy(model)
    worst, used, unstable = 0.0, [], []
    for batch in checks:
        with torch.inference_mode():
            expected = network(torch.from_numpy(batch)).numpy()
        got = np.asarray(run(batch))
        shape = "x".join(map(str, batch.shape))
        if got.shape != expected.shape:
            raise ExportError(f"{what} export of {model.name}: output shape {got.shape} on a {shape} input, "
                              f"PyTorch gives {expected.shape}; nothing was written, report this")
        difference = float(np.max(np.abs(got - expected)))
        allowed = TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
        if not difference <= allowed:  # also catches NaN
            jitter = _float64_difference(network, batch, expected)
            failure = (f"{what} export of {model.name}: output differs from PyTorch's by {difference:.3g} on a "
                       f"{shape} input (allowed {allowed:.3g})")
            if not jitter > allowed:
                raise ExportError(f"{failure}; nothing was written, try another format")
            unstable.append((shape, jitter, failure))
            continue
        worst = max(worst, difference)
        used.append(shape)
    if not used:
        shape, jitter, failure = unstable[0]
        raise ExportError(f"{failure}, but PyTorch's own float32 and float64 outputs differ by {jitter:.3g} there, so "
                          "no input could check it; nothing was written, try another test image")
    if on_message:
        left_out = "".join(f"; input {shape} not used: PyTorch's float32 output is {jitter:.2g} from its float64 one "
                           "there (a near-tie in max-pooling)" for shape, jitter, _ in unstable)
        on_message(f"{what} output matches PyTorch's (largest difference {worst:.2g}) on inputs {', '.join(used)}"
                   f"{left_out}")


def _float64_difference(network: nn.Module, batch: np.ndarray, expected: np.ndarray) -> float:
    """How far PyTorch's float32 output ``expected`` is from the same network's float64 output."""
    with torch.inference_mode():
        exact = copy.deepcopy(network).double()(torch.from_numpy(batch).double()).numpy()
    return float(np.max(np.abs(expected - exact)))


def _test_image(model: SegmentationModel, image: np.ndarray | None) -> np.ndarray:
    """The raw ``(C, Y, X)`` (3D: ``(C, Z, Y, X)``) float32 test image: given, else the first training image,
    else synthetic discs (3D: the shipped EM volume).

    Cropped (centred) to at most 255 pixels a side (3D: 63 voxels) and to odd sizes, to exercise the padding."""
    least = min_sizes(model)
    if image is not None:
        array = _channels_first(np.asarray(image), model, "test image")
        if any(n < m for n, m in zip(array.shape[1:], least)):
            need = f"{max(least)} pixels a side" if model.spatial_dims == 2 else f"{tuple(least)} voxels (z, y, x)"
            raise UserError(f"test image of shape {np.shape(image)}: needs at least {need} for this model; "
                            "use a larger one")
    else:
        array = _training_image(model, least)
    largest = _LARGEST[model.spatial_dims]
    sizes = [min(largest, n - (1 - n % 2)) for n in array.shape[1:]]
    corner = [(n - k) // 2 for n, k in zip(array.shape[1:], sizes)]
    crop = tuple(slice(c, c + k) for c, k in zip(corner, sizes))
    return np.ascontiguousarray(array[(slice(None), *crop)], dtype=np.float32)


def _channels_first(image: np.ndarray, model: SegmentationModel, name: str, colour: bool | None = None) -> np.ndarray:
    """``image`` as ``(C, Y, X)``, or ``(C, Z, Y, X)`` for a 3D model (a ``(Z, Y, X)`` or ``(Z, Y, X, C)`` volume)."""
    if model.spatial_dims == 2:
        return to_channels_first(image, model.in_channels, rgb=colour, name=name)
    colour = image.ndim == 4 and image.shape[-1] in (3, 4) if colour is None else colour
    if image.ndim != (4 if colour else 3):
        raise UserError(f"{name} of shape {image.shape}: this 3D model takes a volume (Z, Y, X) or colour volume "
                        "(Z, Y, X, 3); give one")
    if not colour:
        if model.in_channels != 1:
            raise UserError(f"{name} of shape {image.shape}: is grayscale but the model expects "
                            f"{model.in_channels} colour channels; give a colour volume (Z, Y, X, 3)")
        return image[None]
    image = np.moveaxis(image[..., :3], -1, 0)
    return image.astype(np.float32).mean(axis=0, keepdims=True) if model.in_channels == 1 else image


def _training_image(model: SegmentationModel, least: list[int]) -> np.ndarray:
    from .image_io import read_image_layout
    from .pairing import list_images

    folder = model.config.get("images")
    if folder and Path(folder).is_dir():
        with contextlib.suppress(UserError):
            image, colour = read_image_layout(list_images(folder)[0])
            array = _channels_first(image, model, "training image", colour if model.spatial_dims == 3 else None)
            if all(n >= m for n, m in zip(array.shape[1:], least)):
                return array
    if model.spatial_dims == 3:
        return _sample_volume(model, least)
    from .sample_data import synthetic_pair

    size = (min(255, 4 * least[0] + 1), min(255, 3 * least[1] + 4))
    image, _ = synthetic_pair(size, seed=0, rgb=model.in_channels == 3)
    return to_channels_first(image, model.in_channels)


def _sample_volume(model: SegmentationModel, least: list[int]) -> np.ndarray:
    """The shipped EM volume (:func:`~napari_unet_seg.sample_data.em3d_sample_layers`), as the model's channels,
    reflect-padded along any axis shorter than the model's minimum."""
    from .image_io import read_image
    from .pairing import list_images
    from .sample_data import sample_folders

    volume = read_image(list_images(sample_folders("em3d")[0])[0])[None]
    pads = [(0, 0)] + [(0, max(0, m - n)) for n, m in zip(volume.shape[1:], least)]
    volume = np.pad(volume, pads, mode="reflect") if any(p for _, p in pads) else volume
    return np.repeat(volume, model.in_channels, axis=0)


def _check_inputs(model: SegmentationModel, raw: np.ndarray) -> list[np.ndarray]:
    """Two normalized batches of different odd sizes: the test image, and a small crop of it with its mirror."""
    image = normalize(raw, model.normalization)
    steps = multiples(model)
    extents = [steps[0] + 3, 2 * steps[1] + 1, *(m + 5 for m in steps[2:])]  # 2D: (m + 3, 2m + 1)
    crop = image[(slice(None), *(slice(0, min(k, n)) for k, n in zip(extents, image.shape[1:])))]
    mirror = crop[(slice(None), *(slice(None, None, -1),) * (crop.ndim - 1))]
    return [image[None], np.ascontiguousarray(np.stack([crop, mirror]))]


# --------------------------------------------------------------------------------------------- helpers


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package (``bioimageio`` of ``bioimageio.spec``) is missing
        return False


def _require(*modules: str, what: str) -> None:
    missing = [m for m in modules if not _installed(m)]
    if missing:
        install = _INSTALL["bioimageio" if missing[0].startswith("bioimageio") else "onnx"]
        raise UserError(f"{what} needs the {' and '.join(missing)} package(s); install them: {install}")



def _file_target(out: str | os.PathLike, overwrite: bool, model: SegmentationModel | None = None) -> Path:
    """``out`` once safe to write: never the model's own file (even with ``overwrite``), new unless ``overwrite``."""
    from .outputs import check_output

    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name, e.g. {path / 'model.onnx'}")
    return check_output(path, inputs=[model.path if model is not None else None], overwrite=overwrite)


def _load(model: SegmentationModel | str | os.PathLike) -> SegmentationModel:
    model = load_model(model)
    if not isinstance(model.network, PadToMultiple):
        raise UserError(f"model {model.name}: its network is a {type(model.network).__name__}, not one made by "
                        "build_network; build it with napari_unet_seg.models.build_network")
    return model


def _cpu_copy(model: SegmentationModel) -> nn.Module:
    """The network on the CPU in eval mode, without moving the caller's (it may sit on a GPU)."""
    network = model.network
    if any(p.device.type != "cpu" for p in network.parameters()) or network.training:
        network = copy.deepcopy(network).cpu()
    return network.eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation warnings, progress prints and log lines around one call."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript",
                                                      "torch.fx.experimental.symbolic_shapes", "bioimageio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
