"""A whitening learned from augmented copies of the user's own videos: ``dnsvr train whitening``.

The ``lite`` bundle's PCA whitening keeps the directions in which the collection's region vectors
vary most, whatever makes them vary — the content, or a colour change, a re-encoding, a logo. This
stage learns which directions are which from copies it makes itself (no labels), as the learned
whitening of image retrieval does from matching pairs (Radenović, Tolias and Chum, TPAMI 2019):

1. every video of the collection is decoded once and turned into augmented copies (the recipe's
   ``features`` and ``augment`` stages, :mod:`dnsvr.train.recipe`: global, overlay, temporal and
   picture-in-picture transformations), represented with the index's backbone and whitening;
2. **matching pairs**: in each (video, copy), the regions that are each other's best match (mutual
   nearest neighbours) with a similarity above ``threshold``;
3. the covariance ``C_S`` of the pairs' differences (what a transformation changes), shrunk towards
   its mean eigenvalue by ``shrinkage``, is whitened (``C_S^{-1/2}``) and the collection's regions
   are rotated onto their principal axes in that space: ``P = C_S^{-1/2} R``;
4. the bundle is the index's own (same scoring, same coarse chunks) with its whitening followed by
   ``P`` (:meth:`dnsvr.backbones.PCAWhitening.followed_by`: still one linear map of the raw regions).

``dnsvr index attach INDEX BUNDLE NEW_INDEX`` then builds the new index from the stored features
(``normalise(stored @ P)``, :meth:`~dnsvr.backbones.PCAWhitening.relative_to`), decoding nothing.
Measured on the real-content benchmark in docs/training.md.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.backbones.whitening import map_whitened
from dnsvr.train.selfsup import COPY_SEPARATOR

logger = logging.getLogger(__name__)

#: Matching regions must reach this similarity (in the index's whitened space); chosen on the
#: real-content benchmark's dev splits (0.3 / 0.5 / 0.7).
PAIR_THRESHOLD = 0.3
#: ``C_S`` is shrunk by this share of its mean eigenvalue (0.1 / 0.5 / 1 / 2 compared on dev).
SHRINKAGE = 1.0
#: Fewest matching pairs per whitened dimension for a usable fit.
MIN_PAIRS_PER_DIM = 4
#: Matching coarse chunks (video chunk ↔ copy chunk, mutual best) must reach this similarity, and
#: their differences' covariance is shrunk by this share of its mean eigenvalue; chosen on the
#: real-content benchmark's dev splits (thresholds 0.1 / 0.2 / 0.3 / 0.5 / 0.7, shrinkage 0.05–1).
CHUNK_PAIR_THRESHOLD = 0.1
CHUNK_SHRINKAGE = 0.1
#: With few chunk pairs the shrinkage grows: at least this × dims / pairs (0.15 for 128 dims and 850 pairs,
#: 0.46 for 60 videos' 280 pairs; 1 and 2 compared on the dev splits subsampled to 40–193 videos).
CHUNK_SHRINKAGE_PER_PAIR = 1.0
#: Fewest matching chunk pairs per dimension for a chunk map (fewer: the coarse stage stays unmapped).
MIN_CHUNK_PAIRS_PER_DIM = 2
#: Held-out originals whose copies calibrate the coarse scores onto the fine scale, at most.
CALIBRATION_VIDEOS = 100


class LearnedWhiteningError(ValueError):
    """Too few matching pairs (or none) to learn a whitening."""


@dataclass(frozen=True)
class LearnedWhitening:
    """A learned map of whitened region vectors (``normalise(x @ matrix)``) and what it was fitted on.

    Attributes:
        matrix: float64 ``[D, D]``.
        pairs: matching region pairs used.
        videos: videos with at least one copy.
        copies: copies used.
    """

    matrix: np.ndarray
    pairs: int
    videos: int
    copies: int


#: Regions compared at once by :func:`matching_pairs` (a long video's regions are matched block by block).
PAIR_BLOCK = 4096
#: Held-out originals (and their copies) that :func:`copy_retrieval_map` validates on, at most.
VALIDATION_VIDEOS = 200


def matching_pairs(video: np.ndarray, copy: np.ndarray, threshold: float = PAIR_THRESHOLD) -> np.ndarray:
    """Differences of the mutually best-matching regions of a video and its copy, ``[n, D]``.

    The similarities are computed in blocks of :data:`PAIR_BLOCK` regions a side, so an hour-long video
    needs no ``[T·R, T'·R]`` matrix (ties go to the first region, as one ``argmax`` would).

    Args:
        video: ``[T, R, D]`` L2-normalised regions.
        copy: ``[T', R, D]`` its copy's.
        threshold: least similarity of a pair.
    """
    a = np.asarray(video, dtype=np.float32).reshape(-1, video.shape[-1])
    b = np.asarray(copy, dtype=np.float32).reshape(-1, copy.shape[-1])
    if not len(a) or not len(b):
        return np.zeros((0, a.shape[-1]), dtype=np.float32)
    best_b, best_b_sim = np.zeros(len(a), dtype=np.int64), np.full(len(a), -np.inf, dtype=np.float32)
    best_a, best_a_sim = np.zeros(len(b), dtype=np.int64), np.full(len(b), -np.inf, dtype=np.float32)
    for i in range(0, len(a), PAIR_BLOCK):
        for j in range(0, len(b), PAIR_BLOCK):
            sims = a[i:i + PAIR_BLOCK] @ b[j:j + PAIR_BLOCK].T
            col = sims.argmax(1)
            val = sims[np.arange(len(sims)), col]
            better = val > best_b_sim[i:i + PAIR_BLOCK]
            best_b[i:i + PAIR_BLOCK][better] = col[better] + j
            best_b_sim[i:i + PAIR_BLOCK][better] = val[better]
            row = sims.argmax(0)
            val = sims[row, np.arange(sims.shape[1])]
            better = val > best_a_sim[j:j + PAIR_BLOCK]
            best_a[j:j + PAIR_BLOCK][better] = row[better] + i
            best_a_sim[j:j + PAIR_BLOCK][better] = val[better]
    keep = (best_a[best_b] == np.arange(len(a))) & (best_b_sim > threshold)
    return a[keep] - b[best_b[keep]]


def fit_learned_whitening(videos: Mapping[str, np.ndarray], copies: Mapping[str, np.ndarray], *,
                          threshold: float = PAIR_THRESHOLD, shrinkage: float = SHRINKAGE) -> LearnedWhitening:
    """Learn the map from videos and their copies (copy ids from :func:`dnsvr.train.selfsup.copy_id`).

    Only ``D × D`` statistics are kept while reading, so the mappings may read from disk on demand
    (:func:`feature_views`).

    Args:
        videos: ``{id: [T, R, D]}`` whitened regions of the collection's videos.
        copies: ``{copy id: [T', R, D]}`` their augmented copies', whitened the same way.
        threshold: least similarity of a matching pair.
        shrinkage: share of the pairs' mean variance added to every direction before whitening them.

    Raises:
        LearnedWhiteningError: fewer than ``MIN_PAIRS_PER_DIM`` pairs per dimension.
    """
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    dims = int(np.asarray(next(iter(videos.values()))).shape[-1]) if videos else 0
    pair_scatter, pairs = np.zeros((dims, dims)), 0
    used, n_copies = set(), 0
    for cid, feats in copies.items():
        vid = cid.rsplit(COPY_SEPARATOR, 1)[0]
        if vid not in videos:
            continue
        d = matching_pairs(videos[vid], feats, threshold).astype(np.float64)
        if len(d):
            pair_scatter += d.T @ d
            pairs += len(d)
            used.add(vid)
            n_copies += 1
    if pairs < MIN_PAIRS_PER_DIM * max(dims, 1):
        raise LearnedWhiteningError(f"{pairs} matching region pairs are too few to learn a {dims}-d whitening "
                                    f"(need {MIN_PAIRS_PER_DIM * dims}); train on more videos or more copies")
    cov_s = pair_scatter / pairs
    cov_s += shrinkage * np.trace(cov_s) / dims * np.eye(dims)
    w, v = np.linalg.eigh(cov_s)
    inv_sqrt = (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T
    total, scatter, count = np.zeros(dims), np.zeros((dims, dims)), 0
    for feats in videos.values():
        x = np.asarray(feats, dtype=np.float64).reshape(-1, dims)
        total += x.sum(0)
        scatter += x.T @ x
        count += len(x)
    mean = total / count
    cov = scatter / count - np.outer(mean, mean)
    _, rot = np.linalg.eigh(inv_sqrt @ cov @ inv_sqrt)
    return LearnedWhitening(inv_sqrt @ rot[:, ::-1], pairs=pairs, videos=len(used), copies=n_copies)


def fit_chunk_map(videos: Mapping[str, np.ndarray], copies: Mapping[str, np.ndarray], chunks: int, *,
                  region_map: np.ndarray | None = None, threshold: float = CHUNK_PAIR_THRESHOLD,
                  shrinkage: float | None = None) -> tuple[np.ndarray | None, int]:
    """A learned map of the coarse stage's chunk vectors, from videos and their copies.

    The same idea as :func:`fit_learned_whitening` one level up: each video's and each copy's chunk
    vectors (:func:`dnsvr.bundle.lite_chunk_vectors`, of the regions after ``region_map``) are paired
    (mutually best chunks above ``threshold``), and the covariance of the pairs' differences, shrunk,
    is whitened: ``C^{-1/2}``. A chunk vector keeps what copies keep and loses what the
    transformations change, with the whole video's extent behind each direction (a region pair sees
    a quarter of a frame).

    Args:
        videos: ``{id: [T, R, D]}`` the index's whitened regions of the originals.
        copies: ``{copy id: [T', R, D]}`` their copies'.
        chunks: chunk vectors per video (the bundle's ``coarse_args["chunks"]``).
        region_map: the learned region map (``LearnedWhitening.matrix``) the bundle applies first.
        threshold: least similarity of a chunk pair.
        shrinkage: share of the pairs' mean variance added to every direction (None: the larger of
            :data:`CHUNK_SHRINKAGE` and :data:`CHUNK_SHRINKAGE_PER_PAIR` × dims / pairs — a covariance
            estimated from few pairs is pulled harder towards the identity).

    Returns:
        ``(matrix [D, D] float64, pairs)``, or ``(None, pairs)`` with fewer than
        :data:`MIN_CHUNK_PAIRS_PER_DIM` pairs per dimension.
    """
    from dnsvr.bundle import lite_chunk_vectors

    def chunk_vectors(feats: np.ndarray) -> np.ndarray:
        return lite_chunk_vectors(map_whitened(feats, region_map), chunks).astype(np.float64)

    dims = 0
    scatter, pairs = None, 0
    last: tuple[str, np.ndarray] | None = None  # a video's copies come one after another: keep one video's chunks
    for cid, feats in copies.items():
        vid = cid.rsplit(COPY_SEPARATOR, 1)[0]
        if vid not in videos:
            continue
        if last is None or last[0] != vid:
            last = (vid, chunk_vectors(videos[vid]))
        a, b = chunk_vectors(feats), last[1]
        dims = a.shape[1]
        sims = a @ b.T
        best_b, best_a = sims.argmax(1), sims.argmax(0)
        keep = (best_a[best_b] == np.arange(len(a))) & (sims[np.arange(len(a)), best_b] > threshold)
        d = a[keep] - b[best_b[keep]]
        scatter = d.T @ d if scatter is None else scatter + d.T @ d
        pairs += len(d)
    if scatter is None or pairs < MIN_CHUNK_PAIRS_PER_DIM * dims:
        return None, pairs
    if shrinkage is None:
        shrinkage = max(CHUNK_SHRINKAGE, CHUNK_SHRINKAGE_PER_PAIR * dims / pairs)
    cov = scatter / pairs
    cov += shrinkage * np.trace(cov) / dims * np.eye(dims)
    w, v = np.linalg.eigh(cov)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T, pairs


def fit_coarse_calibration(bundle: Any, videos: Mapping[str, np.ndarray], copies: Mapping[str, np.ndarray],
                           conversion: np.ndarray | None = None) -> tuple[float, float] | None:
    """``(scale, offset)`` putting ``bundle``'s coarse similarities on its fine scale.

    A least-squares fit of the fine stage's scores (``related`` mode) on the coarse similarities over
    every (copy, original) pair of at most :data:`CALIBRATION_VIDEOS` originals — mostly unrelated
    pairs and each copy's own, as a search meets them (:func:`dnsvr.train.export.calibration_fit`: None
    when it does not increase). None with fewer than two originals.

    Args:
        bundle: the :class:`dnsvr.bundle.Bundle` to calibrate (features as given after ``conversion``).
        videos, copies: the index's whitened regions of originals and their copies.
        conversion: the map of the index's whitened features into ``bundle``'s (or None).
    """
    from dnsvr.index._coarse import chunked_similarities
    from dnsvr.train.export import calibration_fit

    ids = sorted(videos)[:CALIBRATION_VIDEOS]
    if len(ids) < 2:
        return None
    reps = {v: bundle.represent(map_whitened(videos[v], conversion)) for v in ids}
    stored_coarse = np.stack([reps[v].coarse for v in ids])
    stored_fine = [reps[v].fine for v in ids]
    wanted = set(ids)
    xs, ys = [], []
    for cid in copies:
        if cid.rsplit(COPY_SEPARATOR, 1)[0] not in wanted:
            continue
        rep = bundle.represent(map_whitened(copies[cid], conversion))
        xs.append(chunked_similarities(rep.coarse[None], stored_coarse, bundle.coarse_chunks)[0])
        ys.append(np.asarray(bundle.fine_match(rep.fine, stored_fine).scores, dtype=np.float64))
    if not xs:
        return None
    return calibration_fit(np.concatenate(xs), np.concatenate(ys))


class _FeatureView(Mapping):
    """The originals or the copies of an open feature file, read on demand."""

    def __init__(self, ff: Any, copies: bool) -> None:
        self._ff = ff
        self._ids = [v for v in ff.ids() if (COPY_SEPARATOR in v) == copies]
        self._set = set(self._ids)

    def __getitem__(self, video_id: str) -> np.ndarray:
        if video_id not in self._set:
            raise KeyError(video_id)
        return self._ff.read(video_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._set


@contextmanager
def feature_views(*paths: str | Path) -> Iterator[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]:
    """``(originals, copies)`` of feature files (ids split by :data:`~dnsvr.train.selfsup.COPY_SEPARATOR`),
    read on demand while the context is open. With two files, the first gives the originals and the
    second the copies (the recipe's ``base.h5`` and ``augmented.h5``)."""
    from dnsvr.features import FeatureFile

    files = [FeatureFile(p) for p in paths]
    try:
        yield _FeatureView(files[0], copies=False), _FeatureView(files[-1], copies=True)
    finally:
        for f in files:
            f.close()


def learned_bundle(source: Any, learned: LearnedWhitening, *, chunk_map: np.ndarray | None = None,
                   calibration: tuple[float, float] | None = None, **provenance: Any) -> Any:
    """The ``lite`` bundle ``source`` (its scoring, coarse stage) with its whitening followed by ``learned``.

    Args:
        source: the index's :class:`dnsvr.bundle.Bundle` (a fitted collection whitening).
        learned: the map, from :func:`fit_learned_whitening` on features whitened by ``source``.
        chunk_map: a learned map of the coarse chunk vectors (:func:`fit_chunk_map`; ``chunks`` coarse
            stages only), or None.
        calibration: ``(coarse_scale, coarse_offset)`` for the scoring (:func:`fit_coarse_calibration`),
            or None to keep the source's.
        provenance: recorded in ``extra["learned_whitening"]`` (threshold, shrinkage, seed...).
    """
    import torch

    from dnsvr.bundle import Bundle, ChunkMap

    extra: dict[str, Any] = dict(source.extra)
    extra["learned_whitening"] = {"from_whitening": source.whitening.identity, "pairs": learned.pairs,
                                  "videos": learned.videos, "copies": learned.copies, **provenance}
    coarse_args, coarse_net = dict(source.coarse_args), None
    if chunk_map is not None:
        if source.coarse_type != "chunks":
            raise ValueError(f"a chunk map needs a 'chunks' coarse stage; {source.name!r} has {source.coarse_type!r}")
        coarse_net = ChunkMap(len(chunk_map))
        coarse_net.matrix.copy_(torch.from_numpy(np.asarray(chunk_map, dtype=np.float32)))
        coarse_args["map_dims"] = len(chunk_map)
    scoring = source.scoring
    if calibration is not None:
        scoring = dataclasses.replace(scoring, coarse_scale=round(calibration[0], 4),
                                      coarse_offset=round(calibration[1], 4))
    return Bundle("lite-learned", source.backbone, whitening=source.whitening.followed_by(learned.matrix),
                  fine_type=source.fine_type, fine_args=source.fine_args, coarse_type=source.coarse_type,
                  coarse_net=coarse_net, coarse_args=coarse_args, whitening_dims=source.whitening_dims,
                  extra=extra, scoring=scoring)


def build_learned_bundle(source: Any, videos: Mapping[str, np.ndarray], copies: Mapping[str, np.ndarray], *,
                         threshold: float = PAIR_THRESHOLD, shrinkage: float = SHRINKAGE,
                         learned: LearnedWhitening | None = None,
                         calibrate_on: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
                         **provenance: Any) -> tuple[Any, LearnedWhitening]:
    """Fit everything a learned bundle holds and build it: the region map, the chunk map (``chunks``
    coarse stages, enough pairs) and the coarse calibration.

    Args:
        source: the index's bundle.
        videos, copies: the index's whitened regions of the originals and their copies.
        threshold, shrinkage: of the region map (:func:`fit_learned_whitening`).
        learned: an already fitted region map (None: fit it here).
        calibrate_on: ``(videos, copies)`` to fit the coarse calibration on (default: the same ones;
            ``train run`` gives its held-out videos).
        provenance: recorded in ``extra["learned_whitening"]``.

    Raises:
        LearnedWhiteningError: too few region pairs.
    """
    if learned is None:
        learned = fit_learned_whitening(videos, copies, threshold=threshold, shrinkage=shrinkage)
    chunk_map, chunk_pairs = None, 0
    if source.coarse_type == "chunks":
        chunk_map, chunk_pairs = fit_chunk_map(videos, copies, source.coarse_chunks, region_map=learned.matrix)
        if chunk_map is None:
            logger.warning("%d matching chunk pairs are too few for a chunk map; the coarse stage keeps the "
                           "plain chunk vectors", chunk_pairs)
    bundle = learned_bundle(source, learned, chunk_map=chunk_map, threshold=threshold, shrinkage=shrinkage,
                            chunk_pairs=chunk_pairs,
                                    chunks_mapped=chunk_map is not None, **provenance)
    if chunk_map is not None:
        calibration = None
        for pool in ((calibrate_on, (videos, copies)) if calibrate_on is not None else ((videos, copies),)):
            calibration = calibration or fit_coarse_calibration(bundle, *pool, conversion=learned.matrix)
        if calibration is not None:
            bundle = learned_bundle(source, learned, chunk_map=chunk_map, calibration=calibration,
                                    threshold=threshold, shrinkage=shrinkage, chunk_pairs=chunk_pairs,
                                    chunks_mapped=chunk_map is not None, **provenance)
    return bundle, learned


def copy_retrieval_map(bundle: Any, videos: Mapping[str, np.ndarray], copies: Mapping[str, np.ndarray],
                       conversion: np.ndarray | None = None) -> float:
    """Mean average precision of finding each copy's original among ``videos`` with ``bundle``'s fine stage.

    A self-supervised validation: the copies are made, so each has exactly one relevant video. At most
    :data:`VALIDATION_VIDEOS` originals (the first by id) and their copies take part.

    Args:
        bundle: a :class:`dnsvr.bundle.Bundle` taking the features as given (after ``conversion``).
        videos: ``{id: [T, R, D]}`` originals (features whitened by the index).
        copies: ``{copy id: [T', R, D]}`` their copies.
        conversion: a map of the index's whitened features for a learned whitening
            (:meth:`dnsvr.backbones.PCAWhitening.relative_to`), or None.
    """
    def rep(x: np.ndarray) -> np.ndarray:
        return bundle.represent(map_whitened(x, conversion)).fine

    ids = sorted(videos)[:VALIDATION_VIDEOS]
    index_of = {v: k for k, v in enumerate(ids)}
    stored = [rep(videos[v]) for v in ids]
    aps = []
    for cid in copies:
        original = cid.rsplit(COPY_SEPARATOR, 1)[0]
        if original not in index_of:
            continue
        scores = np.asarray(bundle.fine_match(rep(copies[cid]), stored).scores, dtype=np.float64)
        target = scores[index_of[original]]
        aps.append(1.0 / (1 + int((scores > target).sum())))
    return float(np.mean(aps)) if aps else float("nan")


@dataclass
class WhiteningTrainResult:
    """What :func:`train_whitening` returns."""

    bundle: Path
    work: Path
    videos: int
    copies: int
    pairs: int
    seconds: dict[str, float]
    chunk_pairs: int = 0


def train_whitening(index_dir: str | Path, output: str | Path, *, videos: str | Path | None = None,
                    work: str | Path | None = None, copies: int = 2, seed: int = 0,
                    threshold: float = PAIR_THRESHOLD, shrinkage: float = SHRINKAGE, device: str = "cpu",
                    progress: bool | None = None, restart: bool = False) -> WhiteningTrainResult:
    """Learn a whitening on a lite index's collection and save it as a bundle for ``index attach``.

    Args:
        index_dir: a ``lite`` index (its backbone, whitening, scoring, and without ``videos`` its videos,
            decoded again from their recorded sources for the copies).
        output: the bundle folder to write.
        videos: train on this folder of videos instead of the index's collection.
        work: the work folder (default ``BUNDLE_DIR.work``; shared with ``dnsvr train run``'s first
            two stages, which a rerun resumes).
        copies: augmented copies per video.
        seed: seeds the augmentations.
        threshold, shrinkage: see :func:`fit_learned_whitening`.
        device: ``"cpu"`` or ``"cuda"`` for extraction.
        progress: progress on stderr while augmenting.
        restart: forget a previous run in ``work``.

    Raises:
        dnsvr.train.recipe.RecipeError: not a lite index, an empty collection, no decodable video.
        LearnedWhiteningError: too few matching pairs.
    """
    from dnsvr.index import VideoIndex
    from dnsvr.train.recipe import RecipeConfig, RecipeError, run_recipe

    started = time.perf_counter()
    result = run_recipe(index_dir, output, videos=videos, work=work, config=RecipeConfig(copies=copies, seed=seed),
                        device=device, progress=progress, restart=restart, stop_after="augment")
    with feature_views(result.work / "base.h5", result.work / "augmented.h5") as (base, augmented):
        if not augmented:
            raise RecipeError("no video could be decoded for augmentation: learning a whitening needs the videos "
                              "(the index's sources, or --videos)")
        with VideoIndex.open(index_dir, readonly=True) as index:
            source = index.bundle
        if "learned_whitening" in source.extra:
            raise RecipeError(f"index {index_dir} already uses a learned whitening; learn it on the index it was "
                              "attached from")
        t0 = time.perf_counter()
        bundle, learned = build_learned_bundle(source, base, augmented, threshold=threshold, shrinkage=shrinkage,
                                               seed=seed)
        fit_s = time.perf_counter() - t0
        n_videos, n_copies = len(base), len(augmented)
    bundle.save(output)
    logger.info("learned whitening on %d region pairs of %d videos (%d copies) → %s", learned.pairs,
                learned.videos, learned.copies, output)
    seconds = dict(result.seconds)
    seconds["fit"] = fit_s
    seconds["total"] = time.perf_counter() - started
    return WhiteningTrainResult(Path(output), result.work, n_videos, n_copies, learned.pairs, seconds,
                                int(bundle.extra["learned_whitening"].get("chunk_pairs", 0)))
