"""The napari plugin (``pip install 'unetpp[napari]'``): an npe2 manifest (``napari.yaml``) with a
reader for the volumes and DICOM series unetpp reads, a widget that segments the open image with
a run folder or a ``MODEL.zip`` at the level a slider picks, and the nuclei-2d sample.

This floor sits beside the CLI: it may import anything of unetpp, nothing imports it. Modules
here import torch (through unetpp's inference) only when a model is opened or a file read, so
napari starts as fast with the plugin as without it.
"""
