import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "napari_unet_seg", "demo", "--out", str(out), "--epochs", "2",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("report.md", "montage.png", "scores.json", "run/best.pt", "run/history.csv", "run/curves.png",
                 "predictions/em_22.png", "predictions/em_28.png"):
        assert (out / name).exists(), name
    assert "| **mean** |" in (out / "report.md").read_text()
    again = subprocess.run([sys.executable, "-m", "napari_unet_seg", "demo", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
