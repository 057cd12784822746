"""The offline demo: generated videos with transformed copies → a ``lite`` index → DnS queries.

:func:`run_demo` writes a small ground-truthed collection with :func:`dnsvr.synthetic.make_collection`
(originals, their re-encoded / cropped / flipped / sped-up / overlaid copies, unrelated
distractors), indexes the copies and distractors with the ``lite`` bundle (EfficientNet-Lite0
regions, whitening fitted on these videos, training-free coarse and fine stages), then queries
with each original video file and checks where its copies rank. ``dnsvr demo`` prints it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEMO_TRANSFORMS = ("reencode", "crop", "hflip", "speed", "overlay")


@dataclass
class DemoResult:
    """What the demo built and found.

    Attributes:
        index_dir: the index it built.
        results: one :class:`dnsvr.search.QueryResults` per original.
        positives: ``{query id: [ids of its transformed copies]}``.
        transforms: ``{copy id: transform}``.
        timings: seconds per step (``generate``, ``index``, ``search``).
        indexed: number of videos indexed; ``frames``: their frames.
    """

    index_dir: Path
    results: list[Any]
    positives: dict[str, list[str]]
    transforms: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    indexed: int = 0
    frames: int = 0

    def found(self, k: int = 5) -> tuple[int, int]:
        """``(copies ranked in the top k of their original's query, all copies)``."""
        hit = total = 0
        for q in self.results:
            want = set(self.positives.get(q.query, []))
            top = {r.video_id for r in q.results[:k]}
            hit += len(want & top)
            total += len(want)
        return hit, total


def run_demo(workdir: str | Path, *, originals: int = 3, distractors: int = 4,
             transforms: Sequence[str] = DEMO_TRANSFORMS, seconds: float = 10.0, top_k: int = 8,
             budget: Any = None, bundle: str = "lite",
             status: Callable[[str], None] | None = None) -> DemoResult:
    """Generate videos, build an index, query it.

    Args:
        workdir: an empty or new folder; receives ``videos/`` and ``index/``.
        originals: query videos (each gets one copy per transform, all indexed).
        distractors: unrelated indexed videos.
        transforms: the copies made of each original (names of :data:`dnsvr.synthetic.TRANSFORMS`).
        seconds: clip length.
        top_k: results per query.
        budget: fine re-ranking budget (default: the search default).
        bundle: the bundle to build the index with.
        status: callback receiving one line per step.

    Returns:
        :class:`DemoResult`.
    """
    from dnsvr.index.video_index import VideoIndex
    from dnsvr.synthetic import make_collection

    say = status or (lambda _msg: None)
    root = Path(workdir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    say(f"generating {originals} videos with {len(transforms)} transformed copies each "
        f"({', '.join(transforms)}) and {distractors} unrelated videos")
    coll = make_collection(root / "videos", n_originals=originals, n_distractors=distractors,
                           transforms=tuple(transforms), seconds=seconds)
    timings["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    indexed = {vid: path for vid, path in coll.videos.items() if vid not in set(coll.queries)}
    list_file = root / "indexed.txt"
    list_file.write_text("".join(f"{vid}\t{path}\n" for vid, path in indexed.items()))
    say(f"indexing {len(indexed)} videos with the {bundle!r} bundle")
    index = VideoIndex.create(root / "index", bundle)
    try:
        report = index.add([list_file], progress=False)
        for item, reason in report.skipped:
            logger.warning("demo: skipped %s: %s", item, reason)
        timings["index"] = time.perf_counter() - t
        frames = int(index.store.n_frames().sum()) if index.store is not None else 0
        t = time.perf_counter()
        say(f"searching with the {len(coll.queries)} original videos as queries")
        results = index.search([str(coll.videos[q]) for q in coll.queries], top_k=top_k, budget=budget,
                               progress=False)
        timings["search"] = time.perf_counter() - t
        n = len(index)
    finally:
        index.close()
    return DemoResult(index_dir=root / "index", results=results, positives=coll.positives,
                      transforms=coll.transforms, timings=timings, indexed=n, frames=frames)
