"""Engine messages in the widgets' words (pure function, no viewer)."""

from __future__ import annotations

import pytest

from napari_unet_seg.widgets._messages import FLAG_LABELS, widget_words


@pytest.mark.parametrize(("engine", "widget"), [
    ("--out runs/x: already holds a run (best.pt); choose another folder, pass --overwrite to replace it, "
     "or --resume to continue it",
     "'output folder' runs/x: already holds a run (best.pt); choose another folder, tick 'overwrite' to replace "
     "it"),
    ("images/a.png has no mask; add the missing files or pass --skip-unpaired", "images/a.png has no mask; add "
                                                                                 "the missing files"),
    ("mask m.png holds class 7; check --classes 3 or the mask", "mask m.png holds class 7; check 'classes' 3 or "
                                                                "the mask"),
    ("--patch-size 1024 is larger than every image; patches are zero-padded (a smaller --patch-size trains "
     "faster)", "'patch size' 1024 is larger than every image; patches are zero-padded (a smaller 'patch size' "
                "trains faster)"),
    ("cannot read clip.mp4: no video backend; install one with pip install imageio[pyav]",
     "cannot read clip.mp4: no video backend"),
    ("out of GPU memory even with batch size 1; use a smaller --patch-size or --width, or --device cpu",
     "out of GPU memory even with batch size 1; use a smaller 'patch size' or 'width', or 'device' cpu"),
    ("model file x.pt: is empty; use another", "model file x.pt: is empty; use another"),
])
def test_widget_words(engine, widget):
    assert widget_words(engine) == widget
    assert "--" not in widget_words(engine) and "pip" not in widget_words(engine)


def test_every_flag_the_engine_names_in_a_message_is_in_the_table():
    import re
    from pathlib import Path

    import napari_unet_seg

    engine = Path(napari_unet_seg.__file__).parent
    named = set()
    for path in engine.glob("*.py"):
        if path.name in ("cli.py", "commands.py"):
            continue
        for message in re.findall(r"(?:UserError|Message)\(f?\"([^\"]*)\"", path.read_text(encoding="utf-8")):
            named.update(re.findall(r"--[a-z][a-z0-9-]*", message))
    missing = sorted(named - set(FLAG_LABELS))
    assert not missing, f"flags the widgets would show as they are: {missing}"
