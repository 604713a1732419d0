"""Models that ship with the package, by name (``load_model("em-membranes")``, ``"dermoscopy-lesions"``,
``"mitochondria-em3d"``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import UserError

__all__ = ["DISPLAY_NAMES", "TERMS", "LUCCHI_TERMS", "LUCCHI_CITES", "terms_lines", "display_name", "pretrained_path",
           "shipped_models", "shipped_model_for"]

#: How shipped models are listed in the widgets (file stem -> name); every registered name, installed or not.
DISPLAY_NAMES = {"em-membranes": "EM membranes (U-Net)", "dermoscopy-lesions": "Dermoscopy lesions (U-Net)",
                 "mitochondria-em3d": "EM mitochondria (3D U-Net)"}

_ISBI = ("ISBI 2012 EM segmentation challenge terms: the training volume may be used freely to build and test "
         "non-commercial image-segmentation software; publications must cite Cardona et al. 2010 and 2012")
_ISBI_CITES = [
    {"text": "Cardona et al. (2010) An integrated micro- and macroarchitectural analysis of the Drosophila brain by "
             "computer-assisted serial section electron microscopy. PLoS Biology 8(10): e1000502",
     "doi": "10.1371/journal.pbio.1000502"},
    {"text": "Cardona et al. (2012) TrakEM2 software for neural circuit reconstruction. PLoS ONE 7(6): e38011",
     "doi": "10.1371/journal.pone.0038011"},
    {"text": "Arganda-Carreras et al. (2015) Crowdsourcing the creation of image segmentation algorithms for "
             "connectomics. Frontiers in Neuroanatomy 9: 142", "doi": "10.3389/fnana.2015.00142"},
]
_ISIC_CITES = [
    {"text": "Codella et al. (2019) Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the "
             "International Skin Imaging Collaboration (ISIC). arXiv:1902.03368", "doi": "10.48550/arXiv.1902.03368"},
    {"text": "Tschandl, Rosendahl, Kittler (2018) The HAM10000 dataset, a large collection of multi-source "
             "dermatoscopic images of common pigmented skin lesions. Scientific Data 5: 180161",
     "doi": "10.1038/sdata.2018.161"},
]
_PH2_CITES = [
    {"text": "Mendonça, Ferreira, Marques, Marçal, Rozeira (2013) PH2 - A dermoscopic image database for research "
             "and benchmarking. 35th Annual International Conference of the IEEE EMBC, 5437-5440",
     "doi": "10.1109/EMBC.2013.6610779"},
]
LUCCHI_TERMS = ("EPFL CVLab Electron Microscopy Dataset (Lucchi et al. 2012, mouse hippocampus CA1 FIB-SEM, "
                "about 5 nm voxels): non-commercial research and benchmarking use, with citation of Lucchi et al. 2012")
LUCCHI_CITES = [
    {"text": "Lucchi, Smith, Achanta, Knott, Fua (2012) Supervoxel-Based Segmentation of Mitochondria in EM Image "
             "Stacks with Learned Shape Features. IEEE Transactions on Medical Imaging 31(2): 474-486",
     "doi": "10.1109/TMI.2011.2171705"},
]

#: The terms that follow each shipped model from its training data, stored in its metadata (``info``) and
#: carried into ``info``, the docs and every export. ``license`` (an SPDX id) is the weights' licence, which
#: exports default to: CC BY-NC 4.0 for both, the standard licence that keeps the data's conditions
#: (attribution, non-commercial use); ``data_license`` states the data's own terms; ``sample`` names the
#: shipped sample set (``sample_data/``) drawn from the same data, used for export test tensors and covers;
#: ``spacing_unit`` the unit of the voxel spacing (``config["spacing"]``) of a 3D model, for its exports.
TERMS = {
    "em-membranes": {"license": "CC-BY-NC-4.0", "data_license": _ISBI, "cite": _ISBI_CITES, "sample": "em",
                     "authors": ["napari-unet-seg developers"]},
    "dermoscopy-lesions": {"license": "CC-BY-NC-4.0", "sample": "dermoscopy", "cite": _ISIC_CITES + _PH2_CITES,
                           "data_license": "CC BY-NC 4.0 (International Skin Imaging Collaboration, ISIC 2018 "
                                           "Task 1): attribution, non-commercial use only; PH2 (Mendonça et al. "
                                           "2013): research and benchmarking use, with citation",
                           "authors": ["napari-unet-seg developers"]},
    "mitochondria-em3d": {"license": "CC-BY-NC-4.0", "data_license": LUCCHI_TERMS, "cite": LUCCHI_CITES,
                          "sample": "em3d", "spacing_unit": "µm", "authors": ["napari-unet-seg developers"]},
}


def _folder() -> Path:
    return Path(str(resources.files(__package__).joinpath("pretrained")))


def shipped_models() -> dict[str, Path]:
    """``{name: file}`` for every shipped model (empty when none ships)."""
    folder = _folder()
    return {p.stem: p for p in sorted(folder.glob("*.pt"))} if folder.is_dir() else {}


def pretrained_path(name: str) -> Path | None:
    """The file of shipped model ``name``, or None for a name that is not registered.

    Raises:
        UserError: ``name`` is registered (:data:`DISPLAY_NAMES`) but its file is not in this build.
    """
    path = shipped_models().get(name)
    if path is None and name in DISPLAY_NAMES:
        raise UserError(f"shipped model {name} ({DISPLAY_NAMES[name]}) is not installed in this build; install a "
                        f"release that ships it, or pass a model file")
    return path


def display_name(name: str) -> str:
    """The listed name of shipped model ``name`` (its file stem when none is registered)."""
    return DISPLAY_NAMES.get(name, name)


@lru_cache(maxsize=None)
def _in_channels(path: Path) -> int:
    from .model_file import read_metadata

    return int(read_metadata(path)["in_channels"])


def shipped_model_for(rgb: bool) -> str | None:
    """The first shipped model (by name) that takes colour (``rgb``) or grayscale images; None if none does."""
    wanted = 3 if rgb else 1
    return next((name for name, path in shipped_models().items() if _in_channels(path) == wanted), None)


def terms_lines(info: dict) -> list[str]:
    """What a model's metadata says about its training data, licence and citations, one line each (for
    ``info``, package READMEs)."""
    lines = [f"data: {info['data']}"] if info.get("data") else []
    if info.get("data_license"):
        lines.append(f"data terms: {info['data_license']}")
    if info.get("license"):
        lines.append(f"licence: {info['license']} (exports default to it)")
    for cite in info.get("cite", []):
        link = f" (doi:{cite['doi']})" if cite.get("doi") else f" ({cite['url']})" if cite.get("url") else ""
        lines.append(f"cite: {cite.get('text', '')}{link}")
    return lines
