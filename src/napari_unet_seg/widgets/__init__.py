"""napari widgets: Segment, Train and Evaluate (contributed through ``napari.yaml``).

One widget per module; ``_worker`` runs the engine's job generators in a thread, ``_params`` turns
widget values into engine arguments (pure functions), ``_models`` holds the shared model list.
Nothing here is imported by ``import napari_unet_seg``: the engine stays free of Qt.
"""
