"""The whole distillation recipe in one call: ``dnsvr train run INDEX -o BUNDLE_DIR``.

From an indexed collection (or ``videos``: another folder, represented with the index's backbone and
whitening) to a trained bundle, without labels:

1. ``features``  — the collection's base features (read from the index; or extracted from ``videos``);
2. ``augment``   — every video decoded once and turned into ``copies`` augmented copies at pixel level
   (:mod:`dnsvr.train.video_augment`: global, overlay, temporal and picture-in-picture transformations),
   whose features are extracted with the index's backbone and whitening and cached (``augmented.h5``);
3. ``split``     — a held-out share of the videos (``holdout``) is set aside for the selector; the
   rest, with their copies, is the students' training collection (``train.h5`` / ``heldout.h5``);
4. ``teacher``   — the self-supervised S^f_A teacher (:mod:`dnsvr.train.selfsup`: InfoNCE over in-batch
   negatives + similarity regulariser) on the training videos and their copies;
5. ``mine``      — the teacher mines pairs on the training collection, each video's copies forced into its
   positive pool (so every anchor has true positives), and on the held-out collection;
6. ``fine``      — the fine student S^f_A, started from the teacher and distilled on the mined pairs;
7. ``coarse``    — the coarse student S^c, distilled on the same pairs;
8. ``selector``  — the selector, labelled on the held-out pairs (which no network trained on);
9. ``bundle``    — students + selector + the index's backbone and whitening, and the calibration of the
   coarse scores onto the fine scale (fitted on the held-out pairs); and the alternative, the index's own
   bundle with a whitening learned from the training videos' copies (:mod:`dnsvr.train.learned_whitening`).
   ``output`` gets the one that better finds the held-out videos' copies (``RecipeConfig.result``), the
   other goes to ``WORK/other-bundle``.

Then ``dnsvr index attach INDEX BUNDLE_DIR NEW_INDEX``. Every stage is resumable: a finished stage is
recorded in ``WORK/recipe.json`` and skipped, a stage that was interrupted continues (feature journal,
mining chunks, training checkpoints), and the result is the same as an uninterrupted run's.
``WORK`` defaults to ``BUNDLE_DIR.work`` beside the bundle.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dnsvr.features import COMPLETE_ATTR, FeatureFile
from dnsvr.train.mining import MiningParams
from dnsvr.train.selfsup import TeacherTrainConfig, copy_id, views_of

logger = logging.getLogger(__name__)

STAGES = ("features", "augment", "split", "teacher", "mine", "fine", "coarse", "selector", "bundle")
#: What ``RecipeConfig.result`` may ask for.
RESULTS = ("auto", "students", "whitening")
STATE_FILE = "recipe.json"


class RecipeError(ValueError):
    """The recipe cannot run on these inputs (empty collection, no decodable video, changed options)."""


@dataclass
class RecipeConfig:
    """The recipe's settings (stored in ``WORK/recipe.json``; a resumed run must use the same).

    Attributes:
        copies: augmented copies per video.
        holdout: share of the videos held out to label the selector (at least 2 videos).
        seed: seeds the split, the augmentations and every training run.
        fps: frames decoded per second for augmentation (the index's sampling rate, 1 by default).
        teacher: the self-supervised teacher's training.
        mining: candidates, positives and random negatives per anchor.
        fine_epochs: epochs of the fine student (it starts from the teacher).
        coarse_epochs: epochs of the coarse student.
        coarse_lr: its learning rate.
        selector_epochs: epochs of the selector.
        positive_share: share of held-out pairs labelled "re-rank" for the selector.
        result: which bundle ``output`` gets: ``"auto"`` (the better, on the held-out videos, at finding
            each copy's original with the fine stage, of the DnS students and of the index's own bundle with
            a whitening learned from the training videos' copies — :mod:`dnsvr.train.learned_whitening`),
            ``"students"`` or ``"whitening"``.
    """

    copies: int = 2
    holdout: float = 0.2
    seed: int = 0
    fps: float = 1.0
    teacher: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    mining: MiningParams = field(default_factory=lambda: MiningParams(candidates=16, positives=4,
                                                                      random_negatives=8))
    fine_epochs: int = 2
    coarse_epochs: int = 5
    coarse_lr: float = 1e-5
    selector_epochs: int = 10
    positive_share: float = 0.1
    result: str = "auto"

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"result must be one of {', '.join(RESULTS)}, got {self.result!r}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class RecipeResult:
    """What :func:`run_recipe` returns: the bundle folder, the work folder and per-stage seconds."""

    bundle: Path
    work: Path
    seconds: dict[str, float]
    videos: int
    copies: int
    result: str = "students"
    validation: dict[str, float] = field(default_factory=dict)


def default_work_dir(output: str | Path) -> Path:
    """``BUNDLE_DIR.work`` beside the bundle folder."""
    output = Path(output)
    return output.with_name(output.name + ".work")


class _State:
    def __init__(self, work: Path, config: dict[str, Any], inputs: dict[str, Any], restart: bool) -> None:
        self.path = work / STATE_FILE
        self.data: dict[str, Any] = {"config": config, "inputs": inputs, "done": {}}
        if self.path.is_file() and not restart:
            old = json.loads(self.path.read_text())
            if old.get("config") != config or old.get("inputs") != inputs:
                raise RecipeError(f"{work} holds a run with other options or inputs; use another --work folder, "
                                  "the same options, or --restart")
            self.data = old
        self.save()

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def mark(self, stage: str, seconds: float, **info: Any) -> None:
        self.data["done"][stage] = {"seconds": round(seconds, 2), **info}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _sources_from_index(index: Any) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    store = index.store
    for vid in index.ids():
        src = store.get(vid).source
        out[vid] = Path(src) if src else None
    return out


def _write_subset(out: Path, parts: Sequence[tuple[Path, Sequence[str]]]) -> None:
    """A feature file of the given ids of the given files (float16, written beside and renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        for path, ids in parts:
            with FeatureFile(path) as ff:
                for vid in ids:
                    ds = h5.create_dataset(vid, data=np.asarray(ff.read(vid), dtype=np.float16))
                    ds.attrs[COMPLETE_ATTR] = True
    os.replace(tmp, out)


def split_videos(ids: Sequence[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """``(training ids, held-out ids)``: a seeded random ``holdout`` share (at least 2, leaving at least 2)."""
    if len(ids) < 4:
        raise RecipeError(f"the recipe needs at least 4 videos (2 to train on, 2 held out); the collection has "
                          f"{len(ids)}")
    n_out = min(max(int(round(len(ids) * holdout)), 2), len(ids) - 2)
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, 31]).permutation(len(ids))
    held = set(int(i) for i in order[:n_out])
    return [v for i, v in enumerate(ids) if i not in held], [v for i, v in enumerate(ids) if i in held]


def _augment(base_ids: list[str], sources: dict[str, Path | None], out: Path, bundle: Any, config: RecipeConfig,
             device: str, progress: bool | None, originals: Path | None) -> dict[str, Any]:
    """Decode each video once; write its copies' features (and, for ``originals``, its own) — resumable."""
    from dnsvr._progress import progress_bar
    from dnsvr.backbones import FeatureExtractor
    from dnsvr.features import FeatureWriter
    from dnsvr.train.video_augment import augment_frames, copy_generator
    from dnsvr.video import VideoError, read_frames

    extractor = FeatureExtractor(bundle.backbone, device=device)
    pre = extractor.preprocessing
    attrs = {"backbone": bundle.backbone, "whitening": json.dumps(bundle.identity().get("whitening"), sort_keys=True),
             "fps": float(config.fps)}
    writers = {"copies": FeatureWriter(out, attrs=attrs, dtype=np.float16)}
    if originals is not None:
        writers["base"] = FeatureWriter(originals, attrs=attrs, dtype=np.float16)
    failed: list[str] = []
    cache: dict[str, np.ndarray] = {}

    def frames_of(vid: str) -> np.ndarray | None:
        if vid in cache:
            return cache[vid]
        src = sources.get(vid)
        if src is None:
            return None
        try:
            frames, _ = read_frames(src, fps=config.fps, short_side=pre.get("resize_short_side", 256),
                                    crop=pre.get("crop", 224))
        except (VideoError, OSError) as exc:
            logger.warning("%s: cannot decode %s for augmentation (%s); it gets no copies", vid, src, exc)
            return None
        if len(cache) >= 2:  # this video and its picture-in-picture host are all that is reused
            cache.pop(next(iter(cache)))
        cache[vid] = frames
        return frames

    def features(frames: np.ndarray) -> np.ndarray:
        return bundle.whiten(extractor.extract(frames))

    try:
        done_copies = writers["copies"].completed_ids()
        done_base = writers["base"].completed_ids() if "base" in writers else set()
        n = len(base_ids)
        with progress_bar(progress) as bar:
            task = bar.add_task("augmenting", total=n)
            for i, vid in enumerate(base_ids):
                wanted = [copy_id(vid, k) for k in range(config.copies)]
                if all(w in done_copies for w in wanted) and ("base" not in writers or vid in done_base):
                    bar.advance(task)
                    continue
                frames = frames_of(vid)
                if frames is None:
                    failed.append(vid)
                    bar.advance(task)
                    continue
                if "base" in writers and vid not in done_base:
                    writers["base"].write(vid, features(frames), {"source": str(sources[vid])})
                host_id = base_ids[(i - 1) % n] if n > 1 else None
                host = frames_of(host_id) if host_id is not None and host_id != vid else None
                for k, cid in enumerate(wanted):
                    if cid in done_copies:
                        continue
                    made, ops = augment_frames(frames, copy_generator(config.seed, vid, k), host=host)
                    writers["copies"].write(cid, features(made), {"operations": json.dumps(ops)})
                bar.advance(task)
    finally:
        for w in writers.values():
            w.close()
    return {"failed": failed}


def _choose_result(students: Any, base: Any, train_h5: Path, held_h5: Path, config: RecipeConfig,
                   work: Path) -> tuple[Any, str, dict[str, float]]:
    """The bundle the recipe writes (``config.result``), its kind and the held-out validation.

    The alternative is the index's own bundle with a whitening learned from the *training* videos' copies;
    ``auto`` keeps whichever finds the held-out copies' originals better (mean average precision, fine
    stage). The bundle not chosen is saved to ``WORK/other-bundle``.
    """
    from dnsvr.train.learned_whitening import (
        LearnedWhiteningError,
        build_learned_bundle,
        copy_retrieval_map,
        feature_views,
    )

    if config.result == "students":
        return students, "students", {}
    try:
        with feature_views(train_h5) as training, feature_views(held_h5) as held:
            whitened, learned = build_learned_bundle(base, *training, calibrate_on=held, seed=config.seed)
    except LearnedWhiteningError as exc:
        if config.result == "whitening":
            raise RecipeError(str(exc)) from exc
        logger.warning("no learned whitening (%s); the bundle keeps the students", exc)
        return students, "students", {}
    validation: dict[str, float] = {}
    kind = "whitening"
    if config.result == "auto":
        with feature_views(held_h5) as held:
            validation = {"students": copy_retrieval_map(students, *held),
                          "whitening": copy_retrieval_map(whitened, *held, conversion=learned.matrix)}
        logger.info("held-out copy retrieval mAP: students %.4f, learned whitening %.4f", validation["students"],
                    validation["whitening"])
        kind = "whitening" if validation["whitening"] >= validation["students"] else "students"
    chosen, other = (whitened, students) if kind == "whitening" else (students, whitened)
    other.save(work / "other-bundle")
    return chosen, kind, validation


def run_recipe(index_dir: str | Path, output: str | Path, *, videos: str | Path | None = None,
               work: str | Path | None = None, config: RecipeConfig | None = None, device: str = "cpu",
               progress: bool | None = None, restart: bool = False,
               stop_after: str | None = None,
               on_stage: Callable[[str, int, int], None] | None = None) -> RecipeResult:
    """Run the whole recipe (see the module docstring) and save the trained bundle to ``output``.

    Args:
        index_dir: a ``lite`` index: its backbone and whitening, and (without ``videos``) its collection.
        output: the bundle folder to write.
        videos: a folder / list of videos to train on instead of the index's (represented with the index's
            backbone and whitening).
        work: the work folder (default :func:`default_work_dir`).
        config: the recipe's settings.
        device: ``"cpu"`` or ``"cuda"`` (extraction and every network).
        progress: progress on stderr (default: a bar on a terminal, lines otherwise).
        restart: forget a previous run in ``work`` instead of resuming it.
        stop_after: stop after this stage (tests, time-sliced runs); calling again resumes.
        on_stage: called with ``(stage, number, total)`` when a stage starts.

    Returns:
        A :class:`RecipeResult`.

    Raises:
        RecipeError: too few videos, no video with a copy, or a ``work`` folder of another run.
    """
    import shutil

    from dnsvr.index import VideoIndex
    from dnsvr.train.collection import features_from_index
    from dnsvr.train.export import build_bundle, fit_coarse_calibration
    from dnsvr.train.mining import mine
    from dnsvr.train.selector import SelectorTrainConfig, train_selector
    from dnsvr.train.selfsup import train_teacher
    from dnsvr.train.students import StudentTrainConfig, train_student
    from dnsvr.train.teachers import load_state_dict

    config = config or RecipeConfig()
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
    output = Path(output)
    work = Path(work) if work is not None else default_work_dir(output)
    if restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    index = VideoIndex.open(index_dir, readonly=True)
    try:
        bundle = index.bundle
        if bundle.fine_type != "chamfer" or not bundle.whitened:
            raise RecipeError(f"index {index_dir}: train on a lite index (its bundle stores base features and has "
                              f"a fitted whitening); this one's bundle is {bundle.name!r}")
        if videos is None:
            if index.store is None or not index.ids():
                raise RecipeError(f"index {index_dir} is empty: nothing to train on")
            sources = _sources_from_index(index)
        else:
            from dnsvr.extract import resolve_inputs

            sources = {vid: path for vid, path in resolve_inputs(videos)}
            if not sources:
                raise RecipeError(f"no video found in {videos}")
        inputs = {"index": str(Path(index_dir).resolve()),
                  "videos": None if videos is None else str(Path(videos).resolve()),
                  "whitening": bundle.identity().get("whitening")}
        state = _State(work, config.to_json(), inputs, restart)
        base, augmented = work / "base.h5", work / "augmented.h5"
        train_h5, held_h5 = work / "train.h5", work / "heldout.h5"
        seconds: dict[str, float] = {}

        def stage(name: str, fn: Callable[[], dict[str, Any] | None]) -> bool:
            """Run ``fn`` unless done; False when the run should stop after it."""
            if on_stage is not None:
                on_stage(name, STAGES.index(name) + 1, len(STAGES))
            if state.done(name):
                logger.info("stage %d/%d %s: done before", STAGES.index(name) + 1, len(STAGES), name)
                seconds[name] = float(state.data["done"][name]["seconds"])
            else:
                logger.info("stage %d/%d %s", STAGES.index(name) + 1, len(STAGES), name)
                t0 = time.perf_counter()
                info = fn() or {}
                seconds[name] = time.perf_counter() - t0
                state.mark(name, seconds[name], **info)
            return stop_after != name

        def do_features() -> dict[str, Any]:
            if videos is None:
                tmp = base.with_name("base.tmp.h5")
                features_from_index(index_dir, tmp)
                os.replace(tmp, base)
            return {}

        def do_augment() -> dict[str, Any]:
            ids = sorted(sources)
            return _augment(ids, sources, augmented, bundle, config, device, progress,
                            originals=base if videos is not None else None)

        def do_split() -> dict[str, Any]:
            with FeatureFile(base) as ff:
                ids = ff.ids()
            with FeatureFile(augmented) as ff:
                copies = set(ff.ids())
            if not copies:
                raise RecipeError("no video could be decoded for augmentation: the recipe needs the videos "
                                  "(the index's sources, or --videos)")
            train_ids, held_ids = split_videos(sorted(ids), config.holdout, config.seed)

            def with_copies(vids: list[str]) -> list[str]:
                return [c for v in vids for c in (copy_id(v, k) for k in range(config.copies)) if c in copies]

            _write_subset(train_h5, [(base, train_ids), (augmented, with_copies(train_ids))])
            _write_subset(held_h5, [(base, held_ids), (augmented, with_copies(held_ids))])
            return {"train_videos": len(train_ids), "heldout_videos": len(held_ids)}

        def views(path: Path) -> dict[str, list[str]]:
            with FeatureFile(path) as ff:
                return views_of(ff.ids())

        def partners(path: Path) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for orig, vs in views(path).items():
                for v in vs:
                    out[v] = [o for o in vs if o != v]
            return out

        teacher_dir = work / "teacher"

        def do_teacher() -> dict[str, Any]:
            r = train_teacher(train_h5, views(train_h5), teacher_dir, config.teacher, resume=True, device=device,
                              progress=progress)
            return {"last": r.history[-1] if r.history else None}

        def do_mine() -> dict[str, Any]:
            for feats, out in ((train_h5, work / "pairs.h5"), (held_h5, work / "pairs_heldout.h5")):
                mine(feats, out, str(teacher_dir), config.mining, device=device, resume=True, progress=progress,
                     partners=partners(feats))
            return {}

        def do_fine() -> dict[str, Any]:
            cfg = StudentTrainConfig(type="fg-att", epochs=config.fine_epochs, seed=config.seed,
                                     learning_rate=config.teacher.learning_rate / 2)
            r = train_student(work / "pairs.h5", train_h5, work / "fine", cfg, resume=True, device=device,
                              progress=progress, init_state=load_state_dict(teacher_dir))
            return {"last": r.history[-1] if r.history else None}

        def do_coarse() -> dict[str, Any]:
            cfg = StudentTrainConfig(type="cg", epochs=config.coarse_epochs, seed=config.seed,
                                     learning_rate=config.coarse_lr)
            r = train_student(work / "pairs.h5", train_h5, work / "coarse", cfg, resume=True, device=device,
                              progress=progress)
            return {"last": r.history[-1] if r.history else None}

        def do_selector() -> dict[str, Any]:
            cfg = SelectorTrainConfig(epochs=config.selector_epochs, positive_share=config.positive_share,
                                      seed=config.seed)
            r = train_selector(work / "pairs_heldout.h5", held_h5, work / "selector", work / "fine",
                               work / "coarse", cfg, resume=True, device=device, progress=progress)
            return {"labels": r.config["labels"]}

        def do_bundle() -> dict[str, Any]:
            calibration = fit_coarse_calibration(work / "fine", work / "coarse", work / "pairs_heldout.h5", held_h5,
                                                 device=device)
            trained = build_bundle(work / "fine", work / "coarse", work / "selector", base=bundle, name="trained",
                                   coarse_calibration=calibration)
            chosen, kind, validation = _choose_result(trained, bundle, train_h5, held_h5, config, work)
            chosen.extra["recipe"] = {"config": config.to_json(), "inputs": inputs, "result": kind,
                                      "validation": validation,
                                      "seconds": {k: round(v, 1) for k, v in seconds.items()}}
            chosen.save(output)
            return {"coarse_calibration": calibration, "result": kind, "validation": validation}

        for name, fn in (("features", do_features), ("augment", do_augment), ("split", do_split),
                         ("teacher", do_teacher), ("mine", do_mine), ("fine", do_fine), ("coarse", do_coarse),
                         ("selector", do_selector), ("bundle", do_bundle)):
            if not stage(name, fn):
                break
        with FeatureFile(base) as ff:
            n_videos = len(ff.ids())
        n_copies = 0
        if augmented.exists():
            with FeatureFile(augmented) as ff:
                n_copies = len(ff.ids())
        done = state.data.get("done", {}).get("bundle", {})
        return RecipeResult(output, work, seconds, n_videos, n_copies, done.get("result", "students"),
                            done.get("validation", {}))
    finally:
        index.close()
