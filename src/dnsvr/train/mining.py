"""Teacher mining: which pairs of an unlabelled collection to distil, with the teacher's similarities.

For every video (the *anchor*):

1. a cheap global vector (mean of L2-normalised region vectors over regions and
   frames, L2-normalised) finds ``candidates`` nearest videos with FAISS;
2. ``random_negatives`` other videos are drawn at random;
3. the teacher scores the anchor against all of them;
4. the ``positives`` candidates with the highest teacher similarity form the
   anchor's positive pool; the other candidates are *hard* negatives (close in the
   cheap space, further for the teacher), the random draws *random* negatives.

Known copies (``partners``: e.g. the augmented copies of :mod:`dnsvr.train.video_augment`, see
:func:`dnsvr.train.recipe.run_recipe`) are scored too and always join the positive pool, besides the
``positives`` mined ones, so every anchor with a copy has a true positive.

Student training then draws one positive and one negative per anchor and epoch.

File format (HDF5, ``format = "dnsvr-mined-pairs"``, ``format_version = 1``; no pickle):

=====================  ==========================  =============================================
dataset / attribute    shape, type                 meaning
=====================  ==========================  =============================================
``video_ids``          [N] utf-8 strings           the collection, in feature-file order
``global``             [N, D] float32              the cheap global vectors
``candidates``         [N, K] int32                FAISS top-K per anchor (-1 = none)
``done``               [N] bool                    anchor fully scored and stored
``anchor``             [P] int32                   anchor index of pair p
``other``              [P] int32                   the other video's index
``similarity``         [P] float32                 teacher similarity (the teacher's own range)
``kind``               [P] uint8                   0 positive, 1 hard negative, 2 random negative
``global_similarity``  [P] float32                 cheap similarity of the pair
attr ``params``        JSON                        mining parameters, features path, teacher identity
attr ``committed``     int                         pairs known complete (the rest is cut on resume)
=====================  ==========================  =============================================

Mining is resumable: anchors are processed in chunks; a chunk's pairs are
appended, then its anchors are marked ``done`` and ``committed`` moves. A killed
run continues where it stopped and produces the same file as an uninterrupted
one (random negatives are drawn from a generator seeded by ``(seed, anchor)``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dnsvr.features import FeatureFile
from dnsvr.train.augment import clip_length
from dnsvr.train.teachers import Teacher, load_teacher
from dnsvr._progress import progress_bar

logger = logging.getLogger(__name__)

FORMAT = "dnsvr-mined-pairs"
FORMAT_VERSION = 1
POSITIVE, HARD_NEGATIVE, RANDOM_NEGATIVE = 0, 1, 2
KIND_NAMES = {POSITIVE: "positive", HARD_NEGATIVE: "hard_negative", RANDOM_NEGATIVE: "random_negative"}


class MiningError(ValueError):
    """Mining inputs or an existing mined-pairs file do not fit together."""


@dataclass(frozen=True)
class MiningParams:
    """Parameters of a mining run (stored in the output file).

    Attributes:
        candidates: nearest videos per anchor by the cheap global similarity (K).
        positives: how many of them, by highest teacher similarity, form the positive pool.
        random_negatives: random other videos per anchor, scored by the teacher as well.
        seed: seeds the random negatives (per anchor).
        max_frames: videos longer than this are cut (first frames) before the teacher sees them.
        faiss_index: FAISS ``index_factory`` spec of the candidate search (inner product).
    """

    candidates: int = 16
    positives: int = 4
    random_negatives: int = 8
    seed: int = 0
    max_frames: int = 300
    faiss_index: str = "Flat"


def global_vector(features: np.ndarray) -> np.ndarray:
    """The cheap global descriptor ``[T, R, D] → [D]``: the ``lite`` bundle's training-free coarse vector
    (mean of L2-normalised regions, L2-normalised; :func:`dnsvr.bundle.lite_coarse_vector`)."""
    from dnsvr.bundle import lite_coarse_vector

    return lite_coarse_vector(features)


def _create(out: Path, ids: list[str], params: dict[str, Any]) -> None:
    with h5py.File(out, "w") as h5:
        h5.attrs["format"] = FORMAT
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["params"] = json.dumps(params, sort_keys=True)
        h5.attrs["committed"] = 0
        h5.attrs["stage"] = "created"
        h5.create_dataset("video_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("done", data=np.zeros(len(ids), dtype=bool))
        for name, dt in (("anchor", np.int32), ("other", np.int32), ("similarity", np.float32),
                         ("kind", np.uint8), ("global_similarity", np.float32)):
            h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(65536,))


def mine(features: str | Path, output: str | Path, teacher: str | Path | Teacher = "chamfer",
         params: MiningParams | None = None, device: str = "cpu", resume: bool = True,
         progress: bool | None = None, chunk_size: int = 64, cache_videos: int = 4096,
         on_chunk: Callable[[int, int], None] | None = None,
         partners: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Mine training pairs of an unlabelled collection with a teacher.

    Args:
        features: HDF5 feature file ``{video_id: [T, 9, D]}``.
        output: the mined-pairs file to write (HDF5, see the module docstring).
        teacher: a :class:`~dnsvr.train.teachers.Teacher`, or a spec for
            :func:`~dnsvr.train.teachers.load_teacher` (``"chamfer"``, ``"visil"``, a student path).
        params: mining parameters (default :class:`MiningParams`).
        device: where the teacher runs.
        resume: continue an existing ``output`` written with the same parameters
            (``False``: start over, overwriting it).
        progress: show a progress bar (default: when stderr is a terminal).
        chunk_size: anchors per committed chunk.
        cache_videos: prepared teacher representations kept in memory (LRU).
        on_chunk: called with ``(anchors_done, anchors_total)`` after each committed chunk.
        partners: video id → ids of its known copies in the same file; they are scored and kept as
            positives of that anchor (ids not in the file are ignored).

    Returns:
        The path of the mined-pairs file.

    Raises:
        MiningError: fewer than 2 videos, or ``output`` exists with other parameters.
    """
    params = params or MiningParams()
    features, output = Path(features), Path(output)
    with FeatureFile(features) as ff:
        ids = ff.ids()
        if len(ids) < 2:
            raise MiningError(f"{features}: need at least 2 videos to mine pairs, found {len(ids)}")
        dims = ff.shape(ids[0])[-1]
        if not isinstance(teacher, str | Path):
            teacher_obj: Teacher = teacher
        else:
            teacher_obj = load_teacher(teacher, dims=dims, device=device)
        stored = {"mining": asdict(params), "features": str(features.resolve()), "num_videos": len(ids),
                  "dims": int(dims), "teacher": teacher_obj.identity}
        position = {v: i for i, v in enumerate(ids)}
        known: dict[int, list[int]] = {}
        for vid, others in (partners or {}).items():
            if vid in position:
                row = sorted({position[o] for o in others if o in position and o != vid})
                if row:
                    known[position[vid]] = row
        if known:
            stored["partners"] = hashlib.sha256(json.dumps(sorted(known.items())).encode()).hexdigest()[:16]

        if output.exists() and resume:
            with h5py.File(output, "r") as h5:
                if h5.attrs.get("format") != FORMAT:
                    raise MiningError(f"{output} exists and is not a mined-pairs file; remove it or pass resume=False")
                old = json.loads(h5.attrs["params"])
                old_ids = [s.decode() if isinstance(s, bytes) else s for s in h5["video_ids"][()]]
            if old != stored or old_ids != ids:
                diff = sorted(k for k in stored if old.get(k) != stored[k])
                raise MiningError(f"{output} was mined with other parameters ({diff or 'video ids'} differ); "
                                  f"remove it or pass resume=False")
            logger.info("resuming mining in %s", output)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            _create(output, ids, stored)

        with h5py.File(output, "r+") as h5:
            committed = int(h5.attrs["committed"])
            for name in ("anchor", "other", "similarity", "kind", "global_similarity"):
                if h5[name].shape[0] != committed:  # cut a chunk that was interrupted mid-write
                    h5[name].resize((committed,))
            if "global" not in h5:
                glob = np.zeros((len(ids), dims), dtype=np.float32)
                with progress_bar(progress) as bar:
                    task = bar.add_task("global vectors", total=len(ids))
                    for i, (_, x) in enumerate(ff.iter(ids)):
                        glob[i] = global_vector(x)
                        bar.advance(task)
                h5.create_dataset("global", data=glob)
                h5.flush()
            glob = h5["global"][()]
            if "candidates" not in h5:
                h5.create_dataset("candidates", data=_candidates(glob, params))
                h5.flush()
            cands = h5["candidates"][()]
            done = h5["done"][()]
            todo = np.flatnonzero(~done)
            logger.info("mining: %d of %d anchors left", len(todo), len(ids))

            cache: OrderedDict[int, Any] = OrderedDict()

            def prepared(i: int) -> Any:
                if i in cache:
                    cache.move_to_end(i)
                    return cache[i]
                rep = teacher_obj.prepare(clip_length(ff.read(ids[i]), params.max_frames))
                cache[i] = rep
                if len(cache) > cache_videos:
                    cache.popitem(last=False)
                return rep

            with progress_bar(progress) as bar:
                task = bar.add_task("teacher mining", total=len(ids), completed=len(ids) - len(todo))
                for start in range(0, len(todo), chunk_size):
                    chunk = todo[start:start + chunk_size]
                    rows = [_score_anchor(int(a), cands[a], glob, params, teacher_obj, prepared, len(ids),
                                          known.get(int(a), []))
                            for a in chunk]
                    _append(h5, rows)
                    d = h5["done"]
                    for a in chunk:
                        d[int(a)] = True
                    h5.attrs["committed"] = int(h5["anchor"].shape[0])
                    h5.flush()
                    bar.advance(task, len(chunk))
                    if on_chunk is not None:
                        on_chunk(len(ids) - len(todo) + start + len(chunk), len(ids))
            h5.attrs["stage"] = "complete"
    return output


def _candidates(glob: np.ndarray, params: MiningParams) -> np.ndarray:
    import faiss

    n, d = glob.shape
    k = min(params.candidates + 1, n)
    index = faiss.index_factory(d, params.faiss_index, faiss.METRIC_INNER_PRODUCT)
    x = np.ascontiguousarray(glob, dtype=np.float32)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    _, nn_idx = index.search(x, k)
    out = np.full((n, params.candidates), -1, dtype=np.int32)
    for i in range(n):
        row = [int(j) for j in nn_idx[i] if j >= 0 and j != i][: params.candidates]
        out[i, :len(row)] = row
    return out


def _score_anchor(a: int, cand_row: np.ndarray, glob: np.ndarray, params: MiningParams,
                  teacher: Teacher, prepared: Callable[[int], Any], n: int,
                  known: Sequence[int] = ()) -> np.ndarray:
    known = [int(k) for k in known]
    cands = [int(c) for c in cand_row if c >= 0 and int(c) not in known]
    randoms = _random_others(np.random.default_rng([params.seed, a]), n, set(cands) | set(known) | {a},
                             params.random_negatives)
    others = known + cands + [int(r) for r in randoms]
    sims = teacher.similarities(prepared(a), [prepared(o) for o in others]) if others else np.zeros(0)
    kinds = np.full(len(others), RANDOM_NEGATIVE, dtype=np.uint8)
    kinds[:len(known)] = POSITIVE
    if cands:
        k0 = len(known)
        order = np.argsort(-sims[k0:k0 + len(cands)], kind="stable")
        kinds[k0:k0 + len(cands)] = HARD_NEGATIVE
        kinds[k0 + order[:params.positives]] = POSITIVE
    rows = np.zeros(len(others), dtype=[("anchor", np.int32), ("other", np.int32), ("similarity", np.float32),
                                         ("kind", np.uint8), ("global_similarity", np.float32)])
    rows["anchor"] = a
    rows["other"] = others
    rows["similarity"] = sims
    rows["kind"] = kinds
    rows["global_similarity"] = glob[others] @ glob[a] if others else []
    return rows


def _random_others(rng: np.random.Generator, n: int, exclude: set[int], k: int) -> list[int]:
    """``k`` distinct random indices in ``[0, n)`` outside ``exclude`` (O(k) for large n, not O(n))."""
    available = n - len(exclude)
    k = min(k, available)
    if k <= 0:
        return []
    if available < 4 * k:  # small collections: choose from the explicit remainder
        pool = np.setdiff1d(np.arange(n), np.fromiter(exclude, dtype=np.int64))
        return [int(v) for v in rng.choice(pool, size=k, replace=False)]
    out: list[int] = []
    seen = set(exclude)
    while len(out) < k:
        v = int(rng.integers(n))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _append(h5: h5py.File, rows: list[np.ndarray]) -> None:
    if not rows:
        return
    cat = np.concatenate(rows)
    n0 = h5["anchor"].shape[0]
    for name in cat.dtype.names:
        ds = h5[name]
        ds.resize((n0 + len(cat),))
        ds[n0:] = cat[name]


class MinedPairs:
    """A mined-pairs file in memory (read-only).

    Attributes:
        video_ids: the collection.
        anchor, other, similarity, kind, global_similarity: the pair arrays (committed pairs only).
        params: the stored mining parameters (incl. the teacher identity).

    Raises:
        MiningError: if ``path`` is not a mined-pairs file of a known version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"mined-pairs file not found: {self.path}")
        with h5py.File(self.path, "r") as h5:
            if h5.attrs.get("format") != FORMAT:
                raise MiningError(f"{self.path}: not a dnsvr mined-pairs file")
            version = int(h5.attrs["format_version"])
            if version > FORMAT_VERSION:
                raise MiningError(f"{self.path}: format version {version} is newer than this dnsvr "
                                  f"({FORMAT_VERSION}); upgrade dnsvr")
            self.params: dict[str, Any] = json.loads(h5.attrs["params"])
            self.complete = h5.attrs.get("stage") == "complete"
            n = int(h5.attrs["committed"])
            self.video_ids = [s.decode() if isinstance(s, bytes) else s for s in h5["video_ids"][()]]
            self.anchor = h5["anchor"][:n]
            self.other = h5["other"][:n]
            self.similarity = h5["similarity"][:n]
            self.kind = h5["kind"][:n]
            self.global_similarity = h5["global_similarity"][:n]
        if not self.complete:
            logger.warning("%s: mining is unfinished; using its %d committed pairs", self.path, n)

    def __len__(self) -> int:
        return len(self.anchor)

    def pools(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per anchor index: (positive row indices, negative row indices) into the pair arrays.

        Only anchors with at least one positive and one negative are returned.
        """
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        order = np.argsort(self.anchor, kind="stable")
        bounds = np.flatnonzero(np.diff(self.anchor[order])) + 1
        for rows in np.split(order, bounds):
            if not len(rows):
                continue
            pos = rows[self.kind[rows] == POSITIVE]
            neg = rows[self.kind[rows] != POSITIVE]
            if len(pos) and len(neg):
                out[int(self.anchor[rows[0]])] = (pos, neg)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts and similarity statistics per pair kind."""
        out: dict[str, Any] = {"videos": len(self.video_ids), "pairs": len(self), "complete": self.complete,
                               "teacher": self.params.get("teacher")}
        for k, name in KIND_NAMES.items():
            s = self.similarity[self.kind == k]
            out[name] = {"count": int(len(s)), "mean_similarity": float(s.mean()) if len(s) else None}
        return out
