"""Packaging: napari finds the manifest from the editable install and from a built wheel; the engine is Qt-free."""

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ["napari_unet_seg", "napari_unet_seg.training", "napari_unet_seg.inference", "napari_unet_seg.evaluation",
          "napari_unet_seg.model_file", "napari_unet_seg.dataset", "napari_unet_seg.models",
          "napari_unet_seg.models.segnet", "napari_unet_seg.metrics", "napari_unet_seg.losses",
          "napari_unet_seg.pairing", "napari_unet_seg.image_io", "napari_unet_seg.demo", "napari_unet_seg.commands",
          "napari_unet_seg.sweep", "napari_unet_seg.sweep_spec", "napari_unet_seg.export", "napari_unet_seg.bioimageio"]


def test_engine_imports_no_qt_napari_or_magicgui():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in ENGINE) +
            "print(sorted(m for m in ('qtpy', 'napari', 'magicgui', 'PyQt5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_api():
    import napari_unet_seg

    for name in ("train", "predict", "evaluate", "load_model"):
        assert callable(getattr(napari_unet_seg, name))
    with pytest.raises(AttributeError):
        napari_unet_seg.nothing_here  # noqa: B018


def test_manifest_from_installed_distribution():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-unet-seg", "--imports"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout
    assert (ROOT / "napari.yaml").resolve() == (ROOT / "src" / "napari_unet_seg" / "napari.yaml").resolve()


def test_manifest_categories_and_menus():
    from napari._app_model.constants import MenuId
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "src" / "napari_unet_seg" / "napari.yaml")
    assert [str(c) for c in manifest.categories] == ["Segmentation"]
    menus = {menu: [item.command for item in items] for menu, items in manifest.contributions.menus.items()}
    assert menus == {"napari/layers/segment": ["napari-unet-seg.segment", "napari-unet-seg.train"],
                     "napari/layers/measure": ["napari-unet-seg.evaluate"]}
    assert set(menus) <= {str(m) for m in MenuId.contributables()}


@pytest.mark.slow
def test_manifest_data_and_licence_in_built_sdist_and_wheel(tmp_path):
    # `python -m build` makes the sdist, then the wheel from the sdist: both must carry everything.
    out = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "did not match any files" not in out.stdout + out.stderr
    sdist = next(tmp_path.glob("napari_unet_seg-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("/LICENSE") and n.count("/") == 1 for n in archive.getnames())
    wheel = next(tmp_path.glob("napari_unet_seg-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence = archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
        archive.extractall(tmp_path / "site")
    assert licence == (ROOT / "LICENSE").read_text() and "BSD 3-Clause License" in licence
    assert "License-Expression: BSD-3-Clause" in metadata and "License-File: LICENSE" in metadata
    assert "Classifier: Programming Language :: Python :: 3.10" in metadata
    assert "Classifier: Operating System :: OS Independent" in metadata
    assert "Project-URL: Source, " in metadata and "Project-URL: Issues, " in metadata
    assert 'Requires-Dist: napari[qt]; extra == "qt"' in metadata
    assert "napari_unet_seg/napari.yaml" in names
    assert any(n.startswith("napari_unet_seg/sample_data/em/images/") for n in names)
    assert "[napari.manifest]" in entry_points and "napari_unet_seg:napari.yaml" in entry_points
    assert "napari-unet-seg = napari_unet_seg.cli:main" in entry_points
    # The manifest inside the wheel is valid and every python_name it names imports from the wheel's files.
    code = ("from npe2 import PluginManifest\n"
            "m = PluginManifest.from_file('napari_unet_seg/napari.yaml')\n"
            "m.validate_imports()\n"
            "import napari_unet_seg; assert napari_unet_seg.__file__.startswith(%r)\n"
            "print(len(m.contributions.commands or []))" % str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path / "site")
    assert out.returncode == 0, out.stderr


def _pytest_without_display(ci: bool) -> subprocess.CompletedProcess:
    """pytest on one widget test file as on a fresh machine: no DISPLAY and no Xvfb on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "CI", "XAUTHORITY")}
    env["PATH"] = str(Path(sys.executable).parent)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/widgets/test_widget_manifest.py"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check matters on Linux")
def test_no_display_skips_widget_tests_with_one_reason():
    out = _pytest_without_display(ci=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Fatal Python error" not in out.stdout + out.stderr
    reasons = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(reasons) == 1, out.stdout
    assert "no display" in reasons[0] and "apt-get install xvfb" in reasons[0]
    assert re.search(r"1 passed, 1 skipped", out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check matters on Linux")
def test_no_display_under_ci_fails():
    out = _pytest_without_display(ci=True)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "widget tests cannot run under CI: no display" in out.stdout
    assert re.search(r"1 passed, (\d+ warnings?, )?1 error", out.stdout)  # old libraries add warnings


@pytest.mark.parametrize("name", ["unet", "basic_unet", "attention_unet", "segnet"])
def test_parameter_count_from_state_dict_matches_the_network(name):
    from napari_unet_seg.models import build_network, network_kwargs, parameter_count

    network = build_network(name, 3, 2, **network_kwargs(name, width=0.25))
    assert parameter_count(network.state_dict()) == sum(p.numel() for p in network.parameters())


def test_info_imports_neither_monai_nor_its_heavy_dependencies():
    code = ("import sys, io, contextlib\nfrom napari_unet_seg.cli import main\n"
            "out = io.StringIO()\nwith contextlib.redirect_stdout(out): code = main(['info', 'em-membranes'])\n"
            "print(code, out.getvalue().splitlines()[0])\n"
            "print(sorted(m for m in ('monai', 'scipy', 'pandas', 'matplotlib', 'skimage', 'napari') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    status, parameters = out.stdout.splitlines()[0], out.stdout.splitlines()[1]
    from napari_unet_seg.model_file import load_model

    count = sum(p.numel() for p in load_model("em-membranes").network.parameters())
    assert status.startswith("0 ") and f"({count / 1e6:.2f} M parameters)" in status
    assert parameters == "[]"
