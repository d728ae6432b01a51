"""Planning: fingerprint, plan and preprocess a data set once, then read it by memory map.

:mod:`.prepare` (``unetpp data prepare``: the plan and the cache under ``DATA/.unetpp``),
:mod:`.sources` (whether a case's files changed since they were prepared) and
:mod:`.prepared` (``PreparedDataset``: ``SegDataset``'s interface over the cache).

May import: :mod:`unetpp.data.cases` and the rooms below it (files, samples), and the ground floor.
"""
