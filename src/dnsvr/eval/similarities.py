"""Similarity files ``{query_id: {video_id: score}}`` and their compact in-memory form.

The file format is the one the ViSiL/DnS reference code writes (JSON,
optionally gzip-compressed). Parsing uses ``orjson`` when it is installed
(``pip install dnsvr[fast]``, several times faster on FIVR-200K-sized files)
and the standard library otherwise; both keep the key order of the file, which
decides how the protocols break ties.

:class:`SimilarityTable` turns the nested dicts into one vocabulary of video
ids plus, per query, an int array of vocabulary positions and a float64 array
of scores, so that the protocols can rank and test membership with numpy.
Queries whose result lists have the same keys in the same order (the usual
case: every query scored against the whole database) share one position array.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import mmap
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.eval import _fastjson

try:  # optional speed-up: 3-5x faster parsing of large files
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when orjson is absent
    _orjson = None

try:  # optional speed-up: ISA-L's inflate, about twice as fast as zlib on large .json.gz files
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - exercised when isal is absent
    _igzip = _isal_zlib = None

logger = logging.getLogger(__name__)

Similarities = Mapping[str, Mapping[str, float]]
#: ``format`` entry of a similarity table saved as ``.npz``.
NPZ_FORMAT = "dnsvr-similarities-1"


class SimilarityFileError(ValueError):
    """A similarity file or mapping is not ``{query_id: {video_id: number}}``."""


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
        # whole-buffer decompression (every gzip member) is faster than reading a GzipFile
        try:
            return (_igzip if _igzip is not None else gzip).decompress(data)
        except (EOFError, OSError, zlib.error, ValueError) as exc:
            raise SimilarityFileError(f"{path}: damaged gzip data ({exc}); truncated download?") from None
    return data


def _check_regular(path: Path) -> None:
    """FileNotFoundError for a missing path, SimilarityFileError for a FIFO/device/folder (never opened)."""
    if path.exists() and not path.is_file():
        raise SimilarityFileError(f"{path}: not a regular file (a FIFO, device, socket or folder): refused")
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")


@contextlib.contextmanager
def _file_text(path: Path, *, inflate: bool = True) -> Iterator[bytes | mmap.mmap]:
    """The text of a similarity file: memory-mapped when plain (no copy of a large file),
    decompressed when gzip-compressed (or left compressed with ``inflate=False``)."""
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
        size = os.fstat(fh.fileno()).st_size
        mapped = None
        if not compressed and size > 0 and hasattr(mmap, "MAP_PRIVATE"):
            mapped = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0),
                               prot=mmap.PROT_READ)
    if mapped is None:
        yield _read_bytes(path) if inflate else path.read_bytes()
        return
    try:
        yield mapped
    finally:
        mapped.close()


def parse_json_bytes(data: bytes, *, source: str = "<bytes>") -> Any:
    """Parse JSON with orjson when available, else the standard library.

    Args:
        data: UTF-8 JSON text.
        source: name used in error messages.

    Returns:
        The decoded object (dicts keep the order of the text).

    Raises:
        SimilarityFileError: if the text is not valid JSON.
    """
    try:
        if _orjson is not None:
            return _orjson.loads(data)
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # orjson's and json's decode errors are ValueErrors
        raise SimilarityFileError(f"{source}: not valid JSON ({str(exc)[:200]})") from None


def load_json(path: str | Path) -> Any:
    """Read a ``.json`` or gzip-compressed ``.json.gz`` file (detected by content).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        SimilarityFileError: if it is not valid JSON.
    """
    path = Path(path)
    _check_regular(path)
    return parse_json_bytes(_read_bytes(path), source=str(path))


def load_similarities(path: str | Path) -> dict[str, dict[str, float]]:
    """Load a similarity file ``{query_id: {video_id: score}}`` (``.json``, ``.json.gz`` or ``.npz``).

    Args:
        path: the file.

    Returns:
        The nested dict, in file order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        SimilarityFileError: if the content is not a JSON object of objects.

    Example:
        >>> sims = load_similarities("fivr5k_sims.json.gz")   # doctest: +SKIP
        >>> evaluate("FIVR-5K", sims)                          # doctest: +SKIP
    """
    if _is_npz(Path(path)):
        return SimilarityTable.from_npz(path).to_dict()
    data = load_json(path)
    _check_shape(data, source=str(path))
    return data


def _is_npz(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"  # a zip archive: numpy's .npz


def save_similarities(similarities: Similarities | SimilarityTable, path: str | Path) -> Path:
    """Write ``{query_id: {video_id: score}}`` as JSON (gzip-compressed when the name ends in
    ``.gz``), or as a binary ``.npz`` (see :meth:`SimilarityTable.save_npz`; loads in a fraction
    of the time).

    Returns:
        The written path.
    """
    path = Path(path)
    if path.suffix == ".npz":
        return as_table(similarities).save_npz(path)
    if isinstance(similarities, SimilarityTable):
        similarities = similarities.to_dict()
    plain = {str(q): {str(v): float(s) for v, s in res.items()} for q, res in similarities.items()}
    if _orjson is not None:
        text = _orjson.dumps(plain)
    else:
        text = json.dumps(plain, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as fh:
            fh.write(text)
    else:
        path.write_bytes(text)
    return path


def _check_shape(data: Any, *, source: str) -> None:
    if not isinstance(data, dict):
        raise SimilarityFileError(
            f"{source}: expected a JSON object {{query_id: {{video_id: score}}}}, got {type(data).__name__}")
    for query, res in data.items():
        if not isinstance(res, dict):
            raise SimilarityFileError(
                f"{source}: results of query {query!r} must be an object {{video_id: score}}, "
                f"got {type(res).__name__}")
        for video, score in res.items():
            if type(score) not in (float, int) or not math.isfinite(score):
                raise SimilarityFileError(f"{source}: score of video {video!r} for query {query!r} is not a "
                                          f"finite number: {score!r}")


@dataclass(frozen=True)
class SimilarityRow:
    """One query's row of a :class:`SimilarityTable` (its scored videos; not a search result).

    Attributes:
        query: the query id.
        query_pos: the query's position in the table vocabulary.
        positions: int64 [n] vocabulary positions of the result videos, in file order.
        scores: float64 [n] their scores.
    """

    query: str
    query_pos: int
    positions: np.ndarray
    scores: np.ndarray


class SimilarityTable:
    """Similarities as numpy arrays over one vocabulary of video ids.

    Args:
        similarities: ``{query_id: {video_id: score}}``.
        consume: remove each query from ``similarities`` (which must then be a
            mutable dict) once converted, so both never sit in memory in full.

    Raises:
        SimilarityFileError: if a score is not a number, naming the query and video.
    """

    def __init__(self, similarities: Similarities | None = None, *, consume: bool = False) -> None:
        self._vocab = _fastjson.Vocabulary()
        self._index: dict[str, int] = self._vocab.index
        self._rows: list[SimilarityRow] = []
        self._queries: dict[str, int] = {}
        if similarities is None:
            return
        for query in list(similarities.keys()):
            res = similarities[query]
            if not isinstance(res, Mapping):
                raise SimilarityFileError(f"results of query {query!r} must be a mapping, got {type(res).__name__}")
            keys = list(res)
            # numbers only: a string "0.9" or a bool is a mistake in the file, not a score
            valid = all(type(v) in (float, int) or isinstance(v, (np.floating, np.integer)) for v in res.values())
            if valid:
                try:
                    scores = np.fromiter(res.values(), dtype=np.float64, count=len(keys))
                    valid = bool(np.isfinite(scores).all())
                except (TypeError, ValueError, OverflowError):
                    valid = False
            if not valid:
                bad = next((k for k, v in res.items()
                            if not (type(v) in (float, int) or isinstance(v, (np.floating, np.integer)))
                            or not np.isfinite(float(v))), "?")
                raise SimilarityFileError(
                    f"score of video {bad!r} for query {query!r} is not a finite number: {res.get(bad)!r}")
            self._append(str(query), keys, scores)
            if consume:
                del similarities[query]  # type: ignore[attr-defined]

    def _append(self, query: str, keys: list[str], scores: np.ndarray) -> None:
        if query in self._queries:
            raise SimilarityFileError(f"query {query!r} appears twice")
        qpos = self._vocab.add(query)
        positions = self._vocab.positions(keys)
        self._queries[query] = len(self._rows)
        self._rows.append(SimilarityRow(query, qpos, positions, scores))

    @classmethod
    def _from_interned(cls, ids: list[str], rows: list[tuple[str, int, np.ndarray, np.ndarray]], *,
                       source: str) -> SimilarityTable:
        """A table from a vocabulary and ``(query, query_pos, positions, scores)`` rows (positions
        already in ``ids``), as the fast JSON reader and ``.npz`` files give them."""
        table = cls()
        table._index.update(zip(ids, range(len(ids))))
        if len(table._index) != len(ids):
            raise SimilarityFileError(f"{source}: duplicate ids")
        for query, qpos, positions, scores in rows:
            if query in table._queries or ids[qpos] != query:
                raise SimilarityFileError(f"{source}: query {query!r} duplicated or misplaced")
            if np.isnan(scores).any():
                raise SimilarityFileError(f"{source}: NaN score for query {query!r}")
            table._queries[query] = len(table._rows)
            table._rows.append(SimilarityRow(query, qpos, positions, scores))
        return table

    @classmethod
    def from_file(cls, path: str | Path) -> SimilarityTable:
        """Load a similarity file (``.json``, ``.json.gz`` or ``.npz``) straight into a table.

        The usual shape of JSON (flat objects of numbers, no escapes) is read by a fast reader
        that creates no Python object per score (``dnsvr.eval._fastjson``: compiled, or numpy when
        the extension is not built); anything else goes through the JSON parser.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            SimilarityFileError: if the content is not ``{query_id: {video_id: number}}``.
        """
        path = Path(path)
        _check_regular(path)
        if _is_npz(path):
            return cls.from_npz(path)
        with _file_text(path, inflate=False) as text:
            try:
                if text[:2] == b"\x1f\x8b":  # scanned while being inflated
                    parsed = _fastjson.parse_similarities_gzip(
                        bytes(text), decompress=(_igzip if _igzip is not None else gzip).decompress,
                        decompressobj=(_isal_zlib if _isal_zlib is not None else zlib).decompressobj)
                else:
                    parsed = _fastjson.parse_similarities(text)
            except (EOFError, OSError, zlib.error) as exc:
                raise SimilarityFileError(f"{path}: damaged gzip data ({exc}); truncated download?") from None
            except _fastjson.FastPathUnavailable as exc:
                logger.info("%s: general JSON parser (%s)", path, exc)
                data = bytes(exc.text if exc.text is not None else text)
            else:
                return cls._from_interned(parsed.ids, parsed.rows, source=str(path))
        sims = parse_json_bytes(data, source=str(path))
        del data
        _check_shape(sims, source=str(path))
        return cls(sims, consume=True)

    @classmethod
    def from_arrays(cls, queries: list[str], video_ids: list[str], scores: np.ndarray) -> SimilarityTable:
        """A table from a dense score matrix: every query scored against the same videos.

        Args:
            queries: ``nq`` query ids.
            video_ids: ``n`` video ids (the columns).
            scores: ``[nq, n]`` scores.

        Raises:
            SimilarityFileError: on a shape mismatch or a NaN score.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(queries), len(video_ids)):
            raise SimilarityFileError(f"scores of shape {scores.shape} for {len(queries)} queries and "
                                      f"{len(video_ids)} videos")
        if np.isnan(scores).any():
            bad = np.argwhere(np.isnan(scores))[0]
            raise SimilarityFileError(f"NaN score for query {queries[bad[0]]!r} and video {video_ids[bad[1]]!r}")
        table = cls()
        keys = [str(v) for v in video_ids]
        for i, query in enumerate(queries):
            table._append(str(query), keys, np.ascontiguousarray(scores[i]))
        return table

    def save_npz(self, path: str | Path) -> Path:
        """Write the table as ``.npz`` (no pickle): the id vocabulary, and per query its
        positions and float64 scores, concatenated with offsets.

        Returns:
            The written path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lengths = [row.positions.size for row in self._rows]
        with open(path, "wb") as fh:
            np.savez(fh, format=np.array(NPZ_FORMAT), ids=np.array(self.ids, dtype=str),
                     queries=np.array(self.queries, dtype=str),
                     query_pos=np.array([row.query_pos for row in self._rows], dtype=np.int64),
                     offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
                     positions=np.concatenate([row.positions for row in self._rows] or [np.zeros(0, np.int64)]),
                     scores=np.concatenate([row.scores for row in self._rows] or [np.zeros(0)]))
        return path

    @classmethod
    def from_npz(cls, path: str | Path) -> SimilarityTable:
        """Read a table written by :meth:`save_npz`.

        Raises:
            SimilarityFileError: if the file is not such a table.
        """
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "format" not in npz or str(npz["format"]) != NPZ_FORMAT:
                    raise SimilarityFileError(f"{path}: not a dnsvr similarity table ({NPZ_FORMAT})")
                ids, queries = npz["ids"].tolist(), npz["queries"].tolist()
                query_pos, offsets = npz["query_pos"], npz["offsets"]
                positions, scores = npz["positions"], npz["scores"].astype(np.float64)
        except (OSError, ValueError, KeyError) as exc:
            raise SimilarityFileError(f"{path}: unreadable similarity table ({exc})") from exc
        n = len(ids)
        if (len(query_pos) != len(queries) or len(offsets) != len(queries) + 1 or positions.shape != scores.shape
                or (positions.size and (positions.min() < 0 or positions.max() >= n)) or offsets[-1] != scores.size):
            raise SimilarityFileError(f"{path}: inconsistent similarity table arrays")
        if np.isnan(scores).any():
            raise SimilarityFileError(f"{path}: NaN score")
        if (query_pos.size and (query_pos.min() < 0 or query_pos.max() >= n)) or np.any(np.diff(offsets) < 0):
            raise SimilarityFileError(f"{path}: inconsistent similarity table arrays")
        rows = []
        prev = None
        for i, query in enumerate(queries):
            pos = positions[offsets[i]:offsets[i + 1]]
            if prev is not None and np.array_equal(pos, prev):
                pos = prev  # share one array when the queries have the same results
            prev = pos
            rows.append((query, int(query_pos[i]), pos, scores[offsets[i]:offsets[i + 1]]))
        return cls._from_interned(ids, rows, source=str(path))

    def to_dict(self) -> dict[str, dict[str, float]]:
        """Back to ``{query_id: {video_id: score}}``."""
        ids = self.ids
        return {row.query: {ids[p]: float(s) for p, s in zip(row.positions.tolist(), row.scores.tolist())}
                for row in self._rows}

    @property
    def ids(self) -> list[str]:
        """Every id in the table (queries and result videos): the available videos."""
        return list(self._index)

    @property
    def index(self) -> Mapping[str, int]:
        """Vocabulary: id → position."""
        return self._index

    @property
    def queries(self) -> list[str]:
        """Query ids in file order."""
        return [row.query for row in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, query: object) -> bool:
        return query in self._queries

    def __iter__(self) -> Iterator[SimilarityRow]:
        return iter(self._rows)

    def __getitem__(self, query: str) -> SimilarityRow:
        try:
            return self._rows[self._queries[query]]
        except KeyError:
            raise KeyError(f"query {query!r} not in the similarities") from None

    def mask(self, ids: set[str] | frozenset[str]) -> np.ndarray:
        """Boolean array over the vocabulary: True where the id is in ``ids``."""
        size = len(self._index)
        out = np.zeros(size, dtype=bool)
        if len(ids) < size:
            pos = [self._index[i] for i in ids if i in self._index]
            out[pos] = True
        else:
            out[:] = np.fromiter((i in ids for i in self._index), dtype=bool, count=size)
        return out

    def positions_of(self, ids: Iterator[str] | list[str] | set[str]) -> np.ndarray:
        """Vocabulary positions of those of ``ids`` present in the table."""
        return np.fromiter((self._index[i] for i in ids if i in self._index), dtype=np.int64)


def as_table(similarities: Similarities | SimilarityTable | str | Path) -> SimilarityTable:
    """Accept a table, a nested mapping, or a path to a similarity file."""
    if isinstance(similarities, SimilarityTable):
        return similarities
    if isinstance(similarities, (str, Path)):
        return SimilarityTable.from_file(similarities)
    if isinstance(similarities, Mapping):
        return SimilarityTable(similarities)
    raise TypeError(f"expected a similarity mapping, table or path, got {type(similarities).__name__}")
