"""Files: one image or mask file in, one out, whatever its format, its geometry kept.

:mod:`.formats` (``read_file`` / ``write_file``: PNG, JPG, BMP, TIF, NIfTI, NRRD, MHA/MHD and
DICOM series folders), :mod:`.dicom` (a series as one volume in world space), :mod:`.dicom_seg`
(DICOM-SEG output), :mod:`.metaimage` (MetaImage without ITK) and :mod:`.limits` (what every
reader checks before it decodes).

May import: :mod:`unetpp.errors`, :mod:`unetpp.io` and this room. Nothing here knows about
cases, data sets or training.
"""
