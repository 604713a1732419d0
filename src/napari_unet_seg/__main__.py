"""``python -m napari_unet_seg``: the command line (see :mod:`napari_unet_seg.cli`)."""

import sys

from .cli import main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
