"""Training collections from an index: the base features an index keeps, as a feature file.

An index built with the ``lite`` bundle stores every video's whitened region
features (its fine representation *is* the base features, float16), so the
collection a user has indexed can be distilled on without decoding a video again:
:func:`features_from_index` writes them to an HDF5 feature file that
:func:`dnsvr.train.mining.mine` and the trainers read. Train with
``--base INDEX/bundle`` when building the bundle, so it carries the same whitening.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dnsvr.features import FeatureWriter

logger = logging.getLogger(__name__)


def features_from_index(index_dir: str | Path, output: str | Path, batch: int = 256) -> Path:
    """Write the base features of every video of an index to an HDF5 feature file.

    Args:
        index_dir: a ``dnsvr`` index whose bundle keeps base features (``lite``: fine stage ``chamfer``).
        output: the ``.h5`` file to write (replaced).
        batch: videos read from the index at a time.

    Returns:
        ``output``.

    Raises:
        dnsvr.bundle.BundleError: when the index stores student representations (not invertible).
        ValueError: when the index is empty.
    """
    from dnsvr.index import VideoIndex

    index = VideoIndex.open(index_dir, readonly=True)
    try:
        ids = index.ids()
        if not ids:
            raise ValueError(f"index {index_dir} is empty: nothing to train on")
        store = index.store
        output = Path(output)
        output.unlink(missing_ok=True)  # replaced, not resumed: the index is the source
        attrs = {"source_index": str(Path(index_dir).resolve()), "bundle": str(index.bundle.identity())}
        # the one HDF5 writer (crash-safe; one checkpoint at the end)
        with FeatureWriter(output, attrs=attrs, checkpoint_interval=float("inf"), fsync=False) as writer:
            for s in range(0, len(ids), batch):
                chunk = ids[s:s + batch]
                for vid, fine in zip(chunk, store.fine(chunk)):
                    writer.write(vid, index.bundle.base_features(np.asarray(fine)))
        logger.info("wrote the base features of %d videos of %s to %s", len(ids), index_dir, output)
        return output
    finally:
        index.close()
