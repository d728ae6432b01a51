"""Cases: from a data set folder to checked, preprocessed cases, read one file at a time.

:mod:`.layouts` (which files form a case: image/mask folders, DSB 2018, nnU-Net), :mod:`.check`
(every case opened once and validated; the fingerprint), :mod:`.orientation`,
:mod:`.resample` and :mod:`.normalize` (the per-case transforms, fitted once as JSON specs) and
:mod:`.dataset` (``SegDataset``: cases out normalised and resampled).

May import: :mod:`unetpp.data.files`, :mod:`unetpp.data.samples` and the ground floor.
"""
