"""Export a model to TorchScript, ONNX or a bioimage.io model package; every export is checked against PyTorch.

Every exported network computes what ``model.network`` computes:

- input ``(N, C, H, W)`` float32: the image **already normalized** as the model was trained
  (:func:`~napari_unet_seg.normalization.normalize`; by default per image, percentile 1 -> 0 and 99.8 -> 1);
- output ``(N, K, H, W)`` float32 **logits**: ``sigmoid`` gives the foreground probability of a binary model
  (K = 1), ``softmax`` over K the class probabilities of a multi-class model.

Sizes: TorchScript keeps :class:`~napari_unet_seg.models.PadToMultiple`'s logic, so it takes any H and W. The
ONNX graph reflect-pads H and W up to a multiple ``m`` of the network and crops back, which is what PyTorch does
for sizes above ``m`` (17 and more for the U-Nets, 33 and more for SegNet); smaller inputs are refused by the
ONNX runtime, so the caller pads them (:func:`min_size`).

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
           "min_size"]

FORMATS = ("torchscript", "onnx", "bioimageio")
ONNX_OPSET = 18
#: Largest accepted ``|exported - pytorch|``, relative to ``max(1, max |pytorch|)`` (float32 logits).
TOLERANCE = 1e-4

_INSTALL = {"onnx": "pip install onnx onnxscript onnxruntime", "bioimageio": "pip install bioimageio.spec"}


class ExportError(UserError):
    """An export that could not be made, or whose output differs from PyTorch's; the message says what to try."""


Messages = Callable[[str], None] | None


def min_size(model: SegmentationModel) -> int:
    """The smallest height and width the ONNX graph (and the bioimage.io package) takes: the multiple + 1."""
    return int(model.network.multiple) + 1


# --------------------------------------------------------------------------------------------- entry point


def export_model(model: SegmentationModel | str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                 check: bool = True, overwrite: bool = False, test_image: np.ndarray | None = None,
                 authors: Sequence[str] | None = None, license: str | None = None,
                 on_message: Messages = None) -> Path:
    """Export ``model`` (object, file or shipped name) as ``fmt`` (one of :data:`FORMATS`) to ``out``; return it.

    ``out`` is a file for ``torchscript`` (``.pt``) and ``onnx`` (``.onnx``), a folder or a ``.zip`` for
    ``bioimageio``. ``test_image`` (raw, ``(Y, X)`` or ``(Y, X, 3)``) is what the check runs on and what the
    package's test tensors are made of; by default the first training image, else a synthetic one.
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
    """Write ``torch.jit.script`` of the network to ``out`` (load it with ``torch.jit.load``); any H and W."""
    model = _load(model)
    target = _file_target(out, overwrite, model)
    inputs = _check_inputs(model, _test_image(model, test_image))
    return atomic_write(target, lambda tmp: _write_torchscript(model, Path(tmp), inputs, check, on_message))


def export_onnx(model: SegmentationModel | str | os.PathLike, out: str | os.PathLike, *, check: bool = True,
                overwrite: bool = False, test_image: np.ndarray | None = None, opset: int = ONNX_OPSET,
                on_message: Messages = None) -> Path:
    """Write an ONNX graph (opset ``opset`` >= 17; dynamic batch, height and width) to ``out``."""
    _require("onnx", "onnxscript", "onnxruntime", what="exporting to ONNX")
    if opset < 17:
        raise UserError(f"ONNX opset {opset} is too old; use 17 or newer")
    model = _load(model)
    target = _file_target(out, overwrite, model)
    inputs = _check_inputs(model, _test_image(model, test_image))
    return atomic_write(target, lambda tmp: _write_onnx(model, Path(tmp), inputs, opset, check, on_message))


# --------------------------------------------------------------------------------------------- TorchScript


class _ScriptableSegNet(nn.Module):
    """SegNet's forward in a form TorchScript compiles, on the same modules (so the same weights).

    ``nn.MaxUnpool2d`` does not script in torch 2.13 (an internal assert) and SegNet keeps the pre-pool shapes
    in an untyped list, so this calls the functional pooling with typed lists instead.
    """

    def __init__(self, segnet: nn.Module) -> None:
        super().__init__()
        self.encoders = segnet.encoders
        self.decoders = nn.ModuleList(list(segnet.decoders)[::-1])  # in the order they run: deepest first
        self.head = segnet.head
        self.kernel = list(nn.modules.utils._pair(segnet.pools[0].kernel_size))
        self.stride = list(nn.modules.utils._pair(segnet.pools[0].stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices: list[torch.Tensor] = []
        sizes: list[list[int]] = []
        for encoder in self.encoders:
            x = encoder(x)
            sizes.append(x.shape[-2:])
            x, index = F.max_pool2d_with_indices(x, self.kernel, self.stride)
            indices.append(index)
        for level, decoder in enumerate(self.decoders):
            depth = len(indices) - 1 - level
            x = decoder(F.max_unpool2d(x, indices[depth], self.kernel, self.stride, 0, sizes[depth]))
        return self.head(x)


def _scripted(model: SegmentationModel) -> torch.jit.ScriptModule:
    from .models.segnet import SegNet

    network = _cpu_copy(model)
    if isinstance(network.network, SegNet):
        network = PadToMultiple(_ScriptableSegNet(network.network), network.multiple).eval()
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
    """PadToMultiple for ONNX: reflect-pad H and W up to a multiple of ``multiple`` (two at least), run, crop back.

    For H and W above ``multiple`` this is exactly PadToMultiple. It has no branch on the sizes (PadToMultiple
    picks reflect or replicate padding), so torch.export keeps them symbolic. Smaller inputs make the reflect
    padding too wide and the ONNX runtime refuses them, rather than computing something else than PyTorch.
    """

    def __init__(self, network: nn.Module, multiple: int) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        m = self.multiple
        pad_h = torch.sym_max((height + m - 1) // m * m, 2 * m) - height
        pad_w = torch.sym_max((width + m - 1) // m * m, 2 * m) - width
        y = self.network(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
        return y[:, :, :height, :width]


def _write_onnx(model: SegmentationModel, path: Path, inputs: list[np.ndarray], opset: int, check: bool,
                on_message: Messages) -> None:
    import onnx

    network = _cpu_copy(model)
    wrapped = _PadCrop(network.network, network.multiple).eval()
    example = torch.from_numpy(inputs[-1])  # odd sizes and a batch of 2: nothing gets specialized
    dims = torch.export.Dim
    shapes = {"x": {0: dims("batch"), 2: dims("height", min=min_size(model)), 3: dims("width", min=min_size(model))}}
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
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", None, "height", "width")):
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
    network = _cpu_copy(model)
    worst = 0.0
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
            raise ExportError(f"{what} export of {model.name}: output differs from PyTorch's by {difference:.3g} "
                              f"on a {shape} input (allowed {allowed:.3g}); nothing was written, try another format")
        worst = max(worst, difference)
    if on_message:
        sizes = ", ".join("x".join(map(str, b.shape)) for b in checks)
        on_message(f"{what} output matches PyTorch's (largest difference {worst:.2g}) on inputs {sizes}")


def _test_image(model: SegmentationModel, image: np.ndarray | None) -> np.ndarray:
    """The raw ``(C, Y, X)`` float32 test image: given, else the first training image, else synthetic discs.

    Cropped (centred) to at most 255 pixels a side and to odd sizes, to exercise the padding."""
    least = min_size(model)
    if image is not None:
        array = to_channels_first(np.asarray(image), model.in_channels, name="test image")
        if min(array.shape[-2:]) < least:
            raise UserError(f"test image of shape {np.shape(image)}: needs at least {least} pixels a side for this "
                            "model; use a larger one")
    else:
        array = _training_image(model, least)
    height, width = (min(255, n - (1 - n % 2)) for n in array.shape[-2:])
    top, left = (array.shape[-2] - height) // 2, (array.shape[-1] - width) // 2
    return np.ascontiguousarray(array[:, top:top + height, left:left + width], dtype=np.float32)


def _training_image(model: SegmentationModel, least: int) -> np.ndarray:
    from .image_io import read_image
    from .pairing import list_images
    from .sample_data import synthetic_pair

    folder = model.config.get("images")
    if folder and Path(folder).is_dir():
        with contextlib.suppress(UserError):
            array = to_channels_first(read_image(list_images(folder)[0]), model.in_channels)
            if min(array.shape[-2:]) >= least:
                return array
    size = (min(255, 4 * least + 1), min(255, 3 * least + 4))
    image, _ = synthetic_pair(size, seed=0, rgb=model.in_channels == 3)
    return to_channels_first(image, model.in_channels)


def _check_inputs(model: SegmentationModel, raw: np.ndarray) -> list[np.ndarray]:
    """Two normalized batches of different odd sizes: the test image, and a small crop of it with its mirror."""
    image = normalize(raw, model.normalization)
    multiple = model.network.multiple
    crop = image[:, : min(multiple + 3, image.shape[1]), : min(2 * multiple + 1, image.shape[2])]
    return [image[None], np.ascontiguousarray(np.stack([crop, crop[:, ::-1, ::-1]]))]




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
