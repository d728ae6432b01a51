"""Loading: splits, training patches or slices, and their augmentation.

:mod:`.pipeline` (``make_split``, cross-validation folds, ``make_train_loader``: seeded per
epoch, foreground oversampled) and :mod:`.augment` (nnU-Net's augmentation recipe in 2D and
3D, seeded).

May import: :mod:`unetpp.data.planning` and the rooms below it, and the ground floor.
"""
