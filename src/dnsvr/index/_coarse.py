"""Derived coarse-search data: an append-only copy of the coarse vectors and an optional ANN index.

SQLite holds every coarse vector (the truth). For search, the writer also appends each
committed video's vector to a flat float32 file and its SQLite ``rowid`` to a parallel int64
file, so searching needs neither SQLite nor a rebuild after adds. Rows are identified by
``rowid``, which is never reused, so a derived row is valid for as long as its row exists:
bringing the derived data up to date is "use the file rows of the active rowids, read any
that are missing from SQLite" — no bookkeeping can make it wrong. Files in ``coarse/``::

    current.json            {"layout", "dim", "vectors", "rowids", "ann": {"spec", "index", "rowids"} | null}
    g<gen>.vectors.f32      float32 [n, dim], appended (memory-mapped by readers)
    g<gen>.rowids.i64       int64 [n], ascending; appended after the vectors, so every rowid
                            present has its vector fully written
    g<gen>.<spec>.faiss     ANN index over the active rows at build time (labels index the
    g<gen>.<spec>.rowids.npy   rowids array next to it)

Removed rows stay in the files (filtered out) until the writer rewrites them: at ``compact``,
or at close when rows are missing or a quarter of them are dead.

A coarse vector is one vector (scored by inner product) or ``chunks`` unit vectors side by side, one
per stretch of the video (scored by :func:`chunked_similarities`; the ANN index then holds their
mean and its hits are scored again exactly).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.index._paths import (
    DamagedIndexError,
    create_new,
    inside,
    open_nofollow,
    read_json,
    replace_file,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

EXACT_SPECS = {"flat", "flatip", "exact"}

#: Fewer active vectors than this and an ANN spec falls back to exact search (training would be poor or fail).
MIN_ANN_VECTORS = 1000

#: Rebuild the ANN index when more than this fraction of its rows are no longer active.
ANN_STALE_FRACTION = 0.2

#: The writer rewrites the derived files when more than this fraction of their rows are dead.
DEAD_REWRITE_FRACTION = 0.25

CURRENT = "current.json"
LAYOUT = "appendable-f32-v1"  # recorded in current.json; other layouts are ignored (and rebuilt)

# The only names current.json may give (those this module writes); anything else is ignored and rebuilt.
_NAME_RE = {
    "vectors": re.compile(r"^g\d{1,18}r?\.vectors\.f32$"),
    "rowids": re.compile(r"^g\d{1,18}r?\.rowids\.i64$"),
    "index": re.compile(r"^g\d{1,18}\.[A-Za-z0-9_]{1,100}\.faiss$"),
    "ann_rowids": re.compile(r"^g\d{1,18}\.[A-Za-z0-9_]{1,100}\.rowids\.npy$"),
}


def _current_problem(cur: Any, dim: int) -> str | None:
    """What is wrong with a parsed current.json (None when it is usable)."""
    if not isinstance(cur, dict):
        return "not a JSON object"
    for key in ("vectors", "rowids"):
        name = cur.get(key)
        if name is not None and (not isinstance(name, str) or not _NAME_RE[key].match(name)):
            return f"{key} names {name!r}, not a derived coarse file of this folder"
    ann = cur.get("ann")
    if ann is not None:
        if not isinstance(ann, dict) or not isinstance(ann.get("spec"), str):
            return "ann is not an object with a spec"
        for key, pat in (("index", "index"), ("rowids", "ann_rowids")):
            name = ann.get(key)
            if not isinstance(name, str) or not _NAME_RE[pat].match(name):
                return f"ann.{key} names {name!r}, not a derived coarse file of this folder"
    return None


def _load_npy(path: Path, dtype: str, max_items: int) -> np.ndarray:
    """A 1-d ``.npy`` array of ``dtype``, its header checked against the file size before allocation."""
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        version = np.lib.format.read_magic(fh)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dt = header(fh)
        if dt.hasobject or dt != np.dtype(dtype) or len(shape) != 1 or shape[0] > max_items or \
                shape[0] * dt.itemsize > size:
            raise ValueError(f"{path.name}: {dt} {shape} is not a row-id array of this index")
        fh.seek(0)
        return np.load(fh, allow_pickle=False)


def is_exact_spec(spec: str) -> bool:
    return spec.replace(" ", "").lower() in EXACT_SPECS


def _spec_slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "index"


def top_k(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the ``k`` largest scores per row, best first (all rows, sorted, when k is None)."""
    n, m = scores.shape
    if k is None or k >= m:
        # introsort (SIMD in numpy 2) is ~4x faster than a stable sort of 100k scores; ties are
        # broken deterministically for identical inputs, which is all reproducibility needs
        return np.argsort(-scores, axis=1)
    if k <= 0:
        return np.empty((n, 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


#: Candidate rows scored at once by :func:`chunked_similarities` (bounds its ``[rows·chunks, chunks]`` block).
CHUNK_BLOCK_ROWS = 16384


def chunked_similarities(q: np.ndarray, m: np.ndarray, chunks: int) -> np.ndarray:
    """Similarities of coarse vectors made of ``chunks`` unit vectors each, ``[n, N]`` float32.

    A pair's score is the smaller of the two directions of a Chamfer similarity over its
    ``chunks × chunks`` chunk similarities: the mean over the query's chunks of their best match
    among the candidate's, and the mean over the candidate's chunks of their best match among the
    query's. Videos are compared stretch by stretch: a video that shows a blend of the query's shots
    all along, which one mean vector cannot tell from the query, scores below a copy. With ``chunks=1``
    it is the inner product.

    Args:
        q: ``[n, chunks·d]`` query vectors.
        m: ``[N, chunks·d]`` stored vectors.
        chunks: chunk vectors per row.
    """
    q = np.asarray(q, dtype=np.float32)
    m = np.asarray(m)  # a plain ndarray view of a memmap (no copy)
    if chunks == 1:
        return (m @ q[0])[None, :] if len(q) == 1 else q @ m.T
    n, big = len(q), len(m)
    d = q.shape[1] // chunks
    out = np.empty((n, big), dtype=np.float32)
    qc = q.reshape(n * chunks, d)
    for start in range(0, big, CHUNK_BLOCK_ROWS):
        block = m[start:start + CHUNK_BLOCK_ROWS]
        rows = len(block)
        # [rows, candidate chunk, query, query chunk]
        s = (np.ascontiguousarray(block, dtype=np.float32).reshape(rows * chunks, d) @ qc.T).reshape(
            rows, chunks, n, chunks)
        query_dir = s.max(axis=1).mean(axis=-1)   # [rows, n]
        target_dir = s.max(axis=3).mean(axis=1)   # [rows, n]
        out[:, start:start + rows] = np.minimum(query_dir, target_dir).T
    return out


def chunk_mean(v: np.ndarray, chunks: int) -> np.ndarray:
    """The L2-normalised mean of each row's chunk vectors, ``[n, d]`` (what the ANN index holds)."""
    v = np.asarray(v, dtype=np.float32)
    if chunks == 1:
        return np.ascontiguousarray(v)
    x = v.reshape(len(v), chunks, -1).mean(axis=1)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)


class CoarseCache:
    """Coarse vectors of the active rows, for exact search and an optional ANN index.

    Args:
        directory: the ``coarse/`` folder.
        dim: coarse vector dimension.
        spec: FAISS index_factory spec; ``"Flat"`` means exact search only.
        loader: ``loader(rowids) -> float32 [len(rowids), dim]`` reading SQLite.
        chunks: chunk vectors per coarse vector (1: one vector, inner-product scores).
    """

    def __init__(
        self, directory: Path, dim: int, spec: str, loader: Callable[[np.ndarray], np.ndarray], chunks: int = 1
    ) -> None:
        self.directory = Path(directory)
        self.dim = int(dim)
        self.chunks = int(chunks)
        self.ann_dim = self.dim // self.chunks
        self.spec = spec
        self.loader = loader
        # the mapped files
        self._names: tuple[str, str] | None = None
        self._file_vectors: np.ndarray | None = None  # float32 [F, dim] (memmap)
        self._file_rowids: np.ndarray | None = None  # int64 [F], ascending
        # the view for one catalog state
        self.rowids: np.ndarray | None = None  # catalog rowids (active, ascending)
        self._src: np.ndarray | None = None  # file row of each catalog position, -1 if missing
        self._missing: np.ndarray | None = None  # catalog positions not in the file
        self._extra: np.ndarray | None = None  # their vectors, from SQLite
        self._identity = False  # catalog == the first len(catalog) file rows
        # the ANN index
        self.ann: Any = None
        self.ann_rowids: np.ndarray | None = None
        self.ann_dirty = False
        self.ann_failed = False
        self.pinned = False  # inside IndexStore.snapshot(): keep the current mapping

    def set_spec(self, spec: str) -> None:
        """Use the FAISS spec ``spec`` from now on: the current ANN index is dropped (built again when needed)."""
        self.spec, self.ann, self.ann_rowids, self.ann_failed = spec, None, None, False

    # -- files --------------------------------------------------------------------------------
    def _read_current(self) -> dict[str, Any] | None:
        """``current.json`` if it is usable; derived data, so damage means "rebuild", never "trust"."""
        try:
            cur = read_json(self.directory, CURRENT, where=f"{self.directory.name}/{CURRENT}")
        except FileNotFoundError:
            return None
        except (OSError, DamagedIndexError) as exc:
            logger.warning("ignoring %s (rebuilt from SQLite): %s", CURRENT, exc)
            return None
        problem = _current_problem(cur, self.dim)
        if problem:
            logger.warning("ignoring damaged index file %s/%s (rebuilt from SQLite): %s", self.directory.name,
                           CURRENT, problem)
            return None
        if cur.get("dim") != self.dim or cur.get("layout") != LAYOUT:
            return None
        return cur  # type: ignore[return-value]

    def _path(self, name: str) -> Path:
        """A derived file inside ``coarse/`` (resolved; damage when it leads outside or is not a file)."""
        return inside(self.directory, name, where=f"{self.directory.name}/{name}")

    def _unmap(self) -> None:
        """Forget the mapped files and the view computed from them (the next sync recomputes it)."""
        if self._file_rowids is not None:
            self.rowids = None
        self._names = None
        self._file_vectors = self._file_rowids = None

    def _map_files(self) -> None:
        """(Re)map the derived files if they changed (grew, or were replaced by a rewrite)."""
        if self.pinned:
            return
        cur = self._read_current()
        if not cur or not cur.get("vectors") or not cur.get("rowids"):
            self._unmap()
            return
        names = (cur["vectors"], cur["rowids"])
        try:
            vpath, rpath = self._path(names[0]), self._path(names[1])
            vsize, rsize = vpath.stat().st_size, rpath.stat().st_size
        except (OSError, DamagedIndexError) as exc:
            if isinstance(exc, DamagedIndexError):
                logger.warning("ignoring the derived coarse files (rebuilt from SQLite): %s", exc)
            self._unmap()
            return
        n = min(vsize // (4 * self.dim), rsize // 8)
        if self._names == names and self._file_rowids is not None and len(self._file_rowids) == n:
            return
        try:
            rowids = np.fromfile(rpath, dtype="<i8", count=n)
            vectors = (np.memmap(vpath, dtype="<f4", mode="r", shape=(n, self.dim)) if n
                       else np.empty((0, self.dim), np.float32))
        except (OSError, ValueError) as exc:
            logger.info("derived coarse files unreadable (%s); using SQLite", exc)
            self._unmap()
            return
        if n > 1 and not (np.diff(rowids) > 0).all():
            logger.warning("derived coarse rowids in %s are not ascending; ignoring the files (verify() reports it)",
                           rpath)
            self._unmap()
            return
        self._names, self._file_vectors, self._file_rowids = names, vectors, rowids
        self.rowids = None  # force a re-sync of the view

    def sync(self, rowids: np.ndarray) -> None:
        """Make the view cover exactly the catalog rows ``rowids`` (ascending active rowids)."""
        self._map_files()
        if self.rowids is not None and np.array_equal(self.rowids, rowids):
            return
        n = len(rowids)
        src = np.full(n, -1, dtype=np.int64)
        frows = self._file_rowids
        if frows is not None and len(frows) and n:
            p = np.searchsorted(frows, rowids)
            pc = np.minimum(p, len(frows) - 1)
            hit = frows[pc] == rowids
            src[hit] = pc[hit]
        missing = np.flatnonzero(src < 0)
        extra = self.loader(rowids[missing]) if len(missing) else np.empty((0, self.dim), np.float32)
        if len(missing):
            logger.debug("coarse: %d of %d vectors read from SQLite (not in the derived files)", len(missing), n)
        self.rowids, self._src, self._missing, self._extra = rowids.copy(), src, missing, extra
        self._identity = not len(missing) and bool(n == 0 or (src[0] == 0 and src[-1] == n - 1))

    @property
    def missing(self) -> int:
        return 0 if self._missing is None else len(self._missing)

    @property
    def dead(self) -> int:
        """File rows that are no longer active."""
        if self._file_rowids is None or self._src is None:
            return 0
        return len(self._file_rowids) - int((self._src >= 0).sum())

    def vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """Coarse vectors of catalog positions (all when None), float32 [n, dim] (a copy)."""
        assert self._src is not None and self._missing is not None and self._extra is not None
        n_all = len(self._src)
        pos = np.arange(n_all) if positions is None else np.asarray(positions, dtype=np.int64)
        out = np.empty((len(pos), self.dim), dtype=np.float32)
        src = self._src[pos]
        have = src >= 0
        if have.any():
            assert self._file_vectors is not None
            out[have] = self._file_vectors[src[have]]
        if (~have).any():
            slot = np.searchsorted(self._missing, pos[~have])
            out[~have] = self._extra[slot]
        return out

    # -- writer side --------------------------------------------------------------------------
    def append(self, rowids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
        """Append committed rows (ascending rowids, above every rowid already there)."""
        if not len(rowids):
            return
        self.directory.mkdir(exist_ok=True)
        cur = self._read_current()
        if not cur or not cur.get("vectors"):
            cur = self._start_files(generation)
        try:
            vpath, rpath = self._path(cur["vectors"]), self._path(cur["rowids"])
        except DamagedIndexError as exc:
            logger.warning("not appending to the derived coarse files (the writer rewrites them): %s", exc)
            return
        rsize = rpath.stat().st_size if rpath.exists() else 0
        n = min((vpath.stat().st_size if vpath.exists() else 0) // (4 * self.dim), rsize // 8)
        if n:
            last = int(np.fromfile(rpath, dtype="<i8", count=1, offset=(n - 1) * 8)[0])
            if last >= int(rowids[0]):
                logger.warning("derived coarse files already hold rowid %d >= %d; they will be rewritten",
                               last, int(rowids[0]))
                return
        # Truncate a torn tail first, then vectors before rowids: a rowid is only ever present
        # once its vector is complete.
        with os.fdopen(open_nofollow(vpath, os.O_RDWR | os.O_CREAT), "r+b") as fv:
            fv.truncate(n * 4 * self.dim)
            fv.seek(0, os.SEEK_END)
            fv.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        with os.fdopen(open_nofollow(rpath, os.O_RDWR | os.O_CREAT), "r+b") as fr:
            fr.truncate(n * 8)
            fr.seek(0, os.SEEK_END)
            fr.write(np.ascontiguousarray(rowids, dtype="<i8").tobytes())

    def _start_files(self, generation: int) -> dict[str, Any]:
        cur = self._read_current() or {}
        cur.update({"vectors": f"g{generation}.vectors.f32", "rowids": f"g{generation}.rowids.i64",
                    "dim": self.dim, "layout": LAYOUT})
        cur.setdefault("ann", None)
        for name in (cur["vectors"], cur["rowids"]):
            os.close(create_new(self.directory / name))
        self._write_current(cur)
        return cur

    def _write_current(self, cur: dict[str, Any]) -> None:
        write_json_atomic(self.directory / CURRENT, cur)

    def persist(self, rowids: np.ndarray, generation: int, force_rewrite: bool = False) -> None:
        """Writer: rewrite the derived files when rows are missing or many are dead; save the ANN index."""
        self.directory.mkdir(exist_ok=True)
        self.sync(rowids)
        n_file = 0 if self._file_rowids is None else len(self._file_rowids)
        rewrite = force_rewrite or self.missing > 0 or (n_file and self.dead > DEAD_REWRITE_FRACTION * n_file)
        cur = self._read_current() or {"dim": self.dim, "layout": LAYOUT, "ann": None}
        if rewrite:
            matrix = self.vectors()
            vname, rname = f"g{generation}.vectors.f32", f"g{generation}.rowids.i64"
            if self._names is not None and vname in self._names:
                vname, rname = f"g{generation}r.vectors.f32", f"g{generation}r.rowids.i64"
            for name, arr in ((vname, matrix), (rname, np.ascontiguousarray(self.rowids, dtype="<i8"))):
                replace_file(self.directory / name, lambda fh, arr=arr: fh.write(np.ascontiguousarray(arr).tobytes()),
                             durable=False)
            cur.update({"vectors": vname, "rowids": rname, "dim": self.dim, "layout": LAYOUT})
            logger.debug("rewrote derived coarse files: %d rows", len(self.rowids))
        if self.ann is not None and (self.ann_dirty or not cur.get("ann") or cur["ann"].get("spec") != self.spec):
            import faiss  # noqa: PLC0415

            base = f"g{generation}.{_spec_slug(self.spec)}"
            # faiss is never given a path: it would follow whatever link is there
            for name, write in ((f"{base}.faiss", lambda fh: fh.write(faiss.serialize_index(self.ann).tobytes())),
                                (f"{base}.rowids.npy",
                                 lambda fh: np.save(fh, np.asarray(self.ann_rowids, dtype="<i8"), allow_pickle=False))):
                replace_file(self.directory / name, write, durable=False)
            cur["ann"] = {"spec": self.spec, "index": f"{base}.faiss", "rowids": f"{base}.rowids.npy"}
            self.ann_dirty = False
        elif is_exact_spec(self.spec):
            cur["ann"] = None
        if rewrite or cur != self._read_current():
            self._write_current(cur)
        keep = {CURRENT, cur.get("vectors"), cur.get("rowids")}
        if cur.get("ann"):
            keep |= {cur["ann"]["index"], cur["ann"]["rowids"]}
        for path in self.directory.iterdir():
            if path.name not in keep:
                try:
                    path.unlink()
                except OSError:
                    pass
        if rewrite:
            self._names = None
            self.sync(rowids)

    # -- search -------------------------------------------------------------------------------
    def exact(self, q: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search: (positions [n, k'], scores [n, k'])."""
        assert self._src is not None and self._missing is not None and self._extra is not None
        n = len(self._src)
        if n == 0:
            return np.empty((len(q), 0), dtype=np.int64), np.empty((len(q), 0), dtype=np.float32)
        fv = self._file_vectors
        if self._identity:
            assert fv is not None
            scores = self._product(q, fv[:n] if len(fv) > n else fv)
        else:
            scores = np.empty((len(q), n), dtype=np.float32)
            have = np.flatnonzero(self._src >= 0)
            if len(have):
                assert fv is not None
                scores[:, have] = self._product(q, fv)[:, self._src[have]]
            if len(self._missing):
                scores[:, self._missing] = self._product(q, self._extra)
        idx = top_k(scores, k)
        return idx, np.take_along_axis(scores, idx, axis=1)

    def _product(self, q: np.ndarray, m: np.ndarray) -> np.ndarray:
        return chunked_similarities(q, m, self.chunks)

    def ann_ready(self) -> bool:
        """Build/extend the ANN index for the current rows; False means: use exact search."""
        import faiss  # noqa: PLC0415

        assert self.rowids is not None
        if is_exact_spec(self.spec) or self.ann_failed or len(self.rowids) < MIN_ANN_VECTORS:
            return False
        if self.ann is None:
            ann_entry = (self._read_current() or {}).get("ann")
            if ann_entry and ann_entry.get("spec") == self.spec:
                try:
                    self.ann_rowids = _load_npy(self._path(ann_entry["rowids"]), "<i8", 1 << 34)
                    with os.fdopen(open_nofollow(self._path(ann_entry["index"]), os.O_RDONLY), "rb") as fh:
                        blob = np.frombuffer(fh.read(), dtype=np.uint8)
                    self.ann = faiss.deserialize_index(blob)
                    if self.ann.ntotal != len(self.ann_rowids) or self.ann.d != self.ann_dim:
                        raise ValueError(f"ANN index has {self.ann.ntotal} rows/{self.ann.d} dims, "
                                         f"rowids {len(self.ann_rowids)}")
                except (RuntimeError, OSError, ValueError, MemoryError) as exc:  # DamagedIndexError included
                    logger.info("stored ANN index unusable (%s); rebuilding", exc)
                    self.ann = self.ann_rowids = None
        if self.ann is not None:
            assert self.ann_rowids is not None
            alive = np.isin(self.ann_rowids, self.rowids, assume_unique=True)
            if (~alive).sum() > ANN_STALE_FRACTION * max(len(self.ann_rowids), 1):
                self.ann = self.ann_rowids = None
        if self.ann is None:
            try:
                index = faiss.index_factory(self.ann_dim, self.spec, faiss.METRIC_INNER_PRODUCT)
                x = chunk_mean(self.vectors(), self.chunks)
                if not index.is_trained:
                    index.train(x)
                index.add(x)
            except RuntimeError as exc:
                logger.warning("could not build the ANN index %r over %d vectors (%s); using exact search",
                               self.spec, len(self.rowids), exc)
                self.ann_failed = True
                return False
            logger.info("built ANN index %r over %d coarse vectors", self.spec, len(self.rowids))
            self.ann, self.ann_rowids, self.ann_dirty = index, self.rowids.copy(), True
            return True
        assert self.ann_rowids is not None
        last = self.ann_rowids[-1] if len(self.ann_rowids) else -1
        new = np.flatnonzero(self.rowids > last)
        if len(new):
            self.ann.add(chunk_mean(self.vectors(new), self.chunks))
            self.ann_rowids = np.concatenate([self.ann_rowids, self.rowids[new]])
            self.ann_dirty = True
        return True

    def search(
        self, q: np.ndarray, k: int | None, params: str | None
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Search; returns (positions [n, k'], scores [n, k'], exact) with -1 padding for ANN misses."""
        if k is None or not self.ann_ready():
            pos, scores = self.exact(q, k)
            return pos, scores, True
        import faiss  # noqa: PLC0415

        assert self.ann_rowids is not None and self.rowids is not None
        if params:
            faiss.ParameterSpace().set_index_parameters(self.ann, params)
        n_dead = len(self.ann_rowids) - int(np.isin(self.ann_rowids, self.rowids, assume_unique=True).sum())
        kk = min(k + n_dead, self.ann.ntotal)
        scores, labels = self.ann.search(chunk_mean(q, self.chunks), kk)
        out_pos = np.full((len(q), k), -1, dtype=np.int64)
        out_sc = np.full((len(q), k), -np.inf, dtype=np.float32)
        for i in range(len(q)):
            lab = labels[i]
            ok = lab >= 0
            rid = self.ann_rowids[lab[ok]]
            p = np.searchsorted(self.rowids, rid)
            pc = np.minimum(p, len(self.rowids) - 1)
            live = self.rowids[pc] == rid
            hit_pos, hit_sc = pc[live], scores[i][ok][live]
            if self.chunks > 1 and len(hit_pos):
                # the ANN index ranks by the chunks' mean: score its hits exactly and rank them again
                hit_sc = chunked_similarities(q[i:i + 1], self.vectors(hit_pos), self.chunks)[0]
                order = np.argsort(-hit_sc, kind="stable")
                hit_pos, hit_sc = hit_pos[order], hit_sc[order]
            sel_pos = hit_pos[:k]
            sel_sc = hit_sc[:k]
            out_pos[i, : len(sel_pos)] = sel_pos
            out_sc[i, : len(sel_sc)] = sel_sc
        return out_pos, out_sc, False

    # -- checks -------------------------------------------------------------------------------
    def check(
        self, all_rowids: np.ndarray, truth: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[list[str], list[str]]:
        """(problems, notes) of the derived files against SQLite (``all_rowids``: every row, ascending)."""
        problems: list[str] = []
        notes: list[str] = []
        try:
            raw = read_json(self.directory, CURRENT, where=f"{self.directory.name}/{CURRENT}")
            what = _current_problem(raw, self.dim)
        except FileNotFoundError:
            what = None
        except (OSError, DamagedIndexError) as exc:
            what = str(exc)
        if what:
            notes.append(f"derived {self.directory.name}/{CURRENT} is damaged ({what}): ignored; searches read "
                         f"the coarse vectors from SQLite and the next writer rebuilds it")
        self._names = None
        self._map_files()
        cur = self._read_current()
        if cur and cur.get("vectors") and self._file_rowids is None:
            problems.append("derived coarse files are unreadable or their row ids are not ascending")
        frows = self._file_rowids
        if frows is not None and len(frows):
            known = np.isin(frows, all_rowids)
            if not known.all():
                # rows purged by a compaction that stopped before rewriting the derived files: never
                # searched (rowids are not reused), dropped at the writer's next rewrite
                notes.append(f"derived coarse files hold {int((~known).sum())} purged rows (rewritten by the writer)")
            assert self._file_vectors is not None
            idx = np.flatnonzero(known)
            for start in range(0, len(idx), 20000):
                part = idx[start : start + 20000]
                want = truth(frows[part])
                diff = ~(want == np.asarray(self._file_vectors[part])).all(axis=1)
                if diff.any():
                    problems.append(f"derived coarse files: {int(diff.sum())} vectors differ from SQLite "
                                    f"(delete coarse/ to rebuild)")
                    break
        if self.ann is not None and self.ann_rowids is not None:
            if self.ann.ntotal != len(self.ann_rowids) or self.ann.d != self.ann_dim:
                problems.append(f"ANN index holds {self.ann.ntotal} vectors of {self.ann.d} dims for "
                                f"{len(self.ann_rowids)} row ids")
            elif not np.isin(self.ann_rowids, all_rowids).all():
                problems.append("ANN index refers to rows unknown to SQLite")
        self.rowids = None
        return problems, notes

    def close(self) -> None:
        self._file_vectors = self._file_rowids = None
        self._names = None
        self.rowids = self._src = self._missing = self._extra = None
        self.ann = None
        self.ann_rowids = None
