"""Feature files: HDF5 with one dataset per video id, shape [T, 9, D].

This is the layout of the published FIVR/CC_WEB_VIDEO/SVD/EVVE/VCDB/DnS-100K
feature files, and the layout ``dnsvr extract`` writes. Every command that
consumes features reads them through :class:`FeatureFile`, so the published
files work as they are.

Example:
    >>> with FeatureFile("fivr5k.hdf5") as ff:          # doctest: +SKIP
    ...     for video_id, feats in ff.iter():
    ...         print(video_id, feats.shape)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

logger = logging.getLogger(__name__)

#: Attribute of dnsvr-written datasets: False while the video is being written, True once complete.
COMPLETE_ATTR = "dnsvr_complete"


class FeatureFileError(ValueError):
    """A feature file or one of its datasets is missing or malformed."""


class FeatureFile:
    """Read-only access to an HDF5 feature file.

    Datasets may sit at the root (published files) or in nested groups; a
    video id is the dataset's path relative to the root (``"a/b"``).
    A dataset whose ``dnsvr_complete`` attribute exists and is false is an
    unfinished write of ``dnsvr extract`` and is skipped; published files have
    no such attribute and every rank-3 dataset counts.

    Args:
        path: the ``.h5``/``.hdf5`` file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        FeatureFileError: if it is not a readable HDF5 file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file not found: {self.path}")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureFileError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self._ids: list[str] | None = None

    # -- container protocol -------------------------------------------------
    def ids(self) -> list[str]:
        """Video ids in storage order (complete datasets of rank 3 only)."""
        if self._ids is None:
            ids: list[str] = []

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
                    if COMPLETE_ATTR in obj.attrs and not bool(obj.attrs[COMPLETE_ATTR]):
                        return
                    ids.append(name)

            self._h5.visititems(visit)
            self._ids = ids
        return list(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in set(self.ids())

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    # -- access ---------------------------------------------------------------
    def _dataset(self, video_id: str) -> h5py.Dataset:
        try:
            ds = self._h5[video_id]
        except KeyError:
            raise KeyError(f"video id {video_id!r} not in {self.path}") from None
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
            shape = getattr(ds, "shape", None)
            raise FeatureFileError(f"{self.path}:{video_id}: expected a [T, 9, D] dataset, got shape {shape}")
        return ds

    def shape(self, video_id: str) -> tuple[int, int, int]:
        """The dataset's shape ``(T, regions, D)`` without reading it."""
        return tuple(self._dataset(video_id).shape)  # type: ignore[return-value]

    def read(self, video_id: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The features of one video as a ``[T, 9, D]`` array of ``dtype``."""
        return np.asarray(self._dataset(video_id)[()], dtype=dtype)

    def info(self, video_id: str) -> dict[str, Any]:
        """The dataset's attributes (fps, backbone, timestamps, ... when dnsvr wrote it)."""
        out: dict[str, Any] = {}
        for key, value in self._dataset(video_id).attrs.items():
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def iter(self, ids: Iterable[str] | None = None,
             dtype: np.dtype | type = np.float32) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(video_id, features)`` one video at a time (streamed, bounded memory).

        Args:
            ids: which videos, in this order; default every video in storage order.
            dtype: the array type to return.
        """
        for video_id in (self.ids() if ids is None else ids):
            yield video_id, self.read(video_id, dtype)

    # -- lifecycle ------------------------------------------------------------
    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
