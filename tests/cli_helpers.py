"""What the bad-input tests share: run the CLI in a subprocess, check its one error line, and hash a folder
before and after to prove nothing the user had changed."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m napari_unet_seg ARGS`` in a subprocess (warnings off), its output captured."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "napari_unet_seg", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def one_line(done: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit status 2, no traceback, and one ``napari-unet-seg: error:`` line on stderr matching ``pattern``."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-unet-seg: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
