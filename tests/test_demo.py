import re
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


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_unet_seg", "demo", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def _files(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_file_for_out_is_refused_with_or_without_overwrite(tmp_path):
    (tmp_path / "f.txt").write_text("keep\n")
    for args, pattern in [(("--out", tmp_path / "f.txt"), r"--out .*f.txt: is a file; give a folder"),
                          (("--out", tmp_path / "f.txt", "--overwrite"), r"--out .*f.txt: is a file; give a folder"),
                          (("--out", tmp_path / "f.txt" / "d"), r"cannot write here \(.*f.txt is a file, not a folder")]:
        done = _cli(*args, "--epochs", 1, "--device", "cpu")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and re.search(pattern, done.stderr), done.stderr
    assert _files(tmp_path) == {"f.txt": b"keep\n"}


def test_check_out_refuses_what_the_demo_would_train_on_or_cannot_write(tmp_path):
    from napari_unet_seg.demo import check_out
    from napari_unet_seg.errors import UserError

    (tmp_path / "data" / "train" / "images").mkdir(parents=True)
    (tmp_path / "data" / "train" / "images" / "mine.png").write_bytes(b"png")
    (tmp_path / "data" / "train" / "images" / ".hidden").write_bytes(b"")  # not listed: no harm
    (tmp_path / "report.md").mkdir()
    with pytest.raises(UserError, match=r"report.md is a folder where the demo writes a file"):
        check_out(tmp_path)
    (tmp_path / "report.md").rmdir()
    with pytest.raises(UserError, match=r"data/train/images holds mine.png, which is not a demo crop"):
        check_out(tmp_path)
    (tmp_path / "data" / "train" / "images" / "mine.png").unlink()
    (tmp_path / "run").write_text("")
    with pytest.raises(UserError, match=r"--out .*run: is a file; give a folder"):
        check_out(tmp_path)
    (tmp_path / "run").unlink()
    assert check_out(tmp_path) == tmp_path


@pytest.mark.slow
def test_overwrite_replaces_only_the_demos_own_files(tmp_path):
    out = tmp_path / "demo"
    for name in ("notes.txt", "run/mine.txt", "predictions/other.png", "data/mine.txt", "report.md"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    done = _cli("--out", out, "--epochs", 1, "--device", "cpu", "--overwrite")
    assert done.returncode == 0, done.stderr
    files = _files(out)
    for name in ("notes.txt", "run/mine.txt", "predictions/other.png", "data/mine.txt"):
        assert files[name] == name.encode(), name
    assert "| **mean** |" in files["report.md"].decode()  # the demo's own file, replaced
