"""Validation of a record before anything is written: id, shapes, dtype, finiteness, timestamps, metadata.

:func:`prepare_record` turns an :class:`~dnsvr.index.records.IndexRecord` (or a plain tuple or dict) into
the :class:`PreparedRecord` the add path writes, or raises :class:`~dnsvr.index.records.RecordError`
naming the video.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, NamedTuple

import numpy as np

from dnsvr.index.records import IndexConfig, IndexRecord, RecordError, _json_default, check_video_id


class PreparedRecord(NamedTuple):
    """A checked record in the form its row is written: little-endian contiguous arrays, timestamps as
    ``start + i·step`` when regular (``ts_blob`` otherwise), the remaining metadata as JSON."""

    video_id: str
    coarse: np.ndarray
    fine: np.ndarray
    selector: float | None
    duration: float | None
    source: str | None
    ts_start: float | None
    ts_step: float | None
    ts_blob: bytes | None
    meta_json: str | None



def prepare_record(record: Any, cfg: IndexConfig) -> PreparedRecord:
    """Check one record against the index's config and convert it for writing.

    Raises:
        RecordError: the id, a shape or dtype, a non-finite value, the timestamps or the metadata.
    """
    dtype = np.dtype(cfg.fine_dtype)
    if isinstance(record, dict):
        try:
            record = IndexRecord(**record)
        except TypeError as exc:
            raise RecordError(f"bad record dict keys {sorted(record)}: {exc}") from exc
    try:
        video_id, coarse, fine, *rest = record
    except (TypeError, ValueError) as exc:
        raise RecordError(f"a record is (video_id, coarse, fine, selector, meta); got {type(record).__name__}"
                          ) from exc
    if len(rest) > 2:
        raise RecordError(f"record for {video_id!r} has {3 + len(rest)} fields, at most 5 expected")
    selector = rest[0] if len(rest) > 0 else None
    meta = rest[1] if len(rest) > 1 else None
    problem = check_video_id(video_id)
    if problem:
        raise RecordError(f"video id {video_id!r}: {problem}")
    # coarse
    c = np.asarray(coarse)
    if c.ndim == 2 and c.shape[0] == 1:
        c = c[0]
    if c.shape != (cfg.coarse_dim,) or not (np.issubdtype(c.dtype, np.floating) or
                                             np.issubdtype(c.dtype, np.integer)):
        raise RecordError(f"{video_id!r}: coarse vector must be numeric [{cfg.coarse_dim}], "
                          f"got {c.dtype} {tuple(np.shape(coarse))}")
    c = np.ascontiguousarray(c, dtype="<f4")
    if not np.isfinite(c).all():
        raise RecordError(f"{video_id!r}: coarse vector contains NaN or inf")
    # fine
    f = np.asarray(fine)
    want = ("T", *cfg.fine_shape)
    if f.ndim != len(want) or tuple(f.shape[1:]) != cfg.fine_shape or f.shape[0] < 1:
        raise RecordError(f"{video_id!r}: fine representation must be [{', '.join(map(str, want))}] "
                          f"with T >= 1, got {tuple(f.shape)}")
    if f.dtype != dtype:
        raise RecordError(f"{video_id!r}: fine representation must be {cfg.fine_dtype} (the index's dtype), "
                          f"got {f.dtype}; convert it explicitly")
    if dtype.kind == "f" and not np.isfinite(f).all():
        raise RecordError(f"{video_id!r}: fine representation contains NaN or inf")
    f = np.ascontiguousarray(f)
    if f.dtype.byteorder == ">":
        f = f.astype(f.dtype.newbyteorder("<"))
    n_frames = f.shape[0]
    # selector
    if selector is not None:
        try:
            selector = float(selector)
        except (TypeError, ValueError) as exc:
            raise RecordError(f"{video_id!r}: selector must be a float or None, got {selector!r}") from exc
        if not math.isfinite(selector):
            raise RecordError(f"{video_id!r}: selector value {selector} is not finite")
    # meta
    meta = dict(meta or {})
    ts = meta.pop("timestamps", None)
    duration = meta.pop("duration", None)
    source = meta.pop("source", None)
    t0 = dt = None
    blob = None
    if ts is not None:
        t = np.asarray(ts, dtype=np.float64).reshape(-1)
        if len(t) != n_frames:
            raise RecordError(f"{video_id!r}: {len(t)} timestamps for {n_frames} frames")
        if not np.isfinite(t).all():
            raise RecordError(f"{video_id!r}: timestamps contain NaN or inf")
        t0 = float(t[0])
        dt = float(t[1] - t[0]) if n_frames > 1 else 0.0
        if not np.array_equal(t0 + np.arange(n_frames, dtype=np.float64) * dt, t):
            t0 = dt = None
            blob = t.astype("<f8").tobytes()
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError) as exc:
            raise RecordError(f"{video_id!r}: duration must be a number, got {duration!r}") from exc
    if source is not None:
        if not isinstance(source, (str, os.PathLike)):
            raise RecordError(f"{video_id!r}: source must be a path or str, got {type(source).__name__}")
        source = os.fspath(source)
    try:
        meta_json = json.dumps(meta, default=_json_default, allow_nan=False) if meta else None
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{video_id!r}: meta is not JSON serialisable ({exc})") from exc
    return PreparedRecord(video_id, c, f, selector, duration, source, t0, dt, blob, meta_json)
