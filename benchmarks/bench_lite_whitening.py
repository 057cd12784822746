"""How many whitened dimensions the ``lite`` bundle should keep for a given number of region vectors.

Generates the demo's collection (originals, transformed copies, unrelated videos), extracts raw
EfficientNet-Lite0 regions once, then for each whitening size (and for no whitening) measures:

* mAP of each original against the copies and distractors, with the training-free coarse vector
  and with the training-free fine similarity (``chamfer_video_similarity``);
* the fine-similarity *margin*: weakest transformed copy minus strongest unrelated video, per query
  (the larger, the safer a threshold; negative means a wrong ranking).

This is what set ``dnsvr.bundle.WHITENING_VECTORS_PER_DIM``.

Usage::

    PYTHONPATH=src python benchmarks/bench_lite_whitening.py [--workdir /tmp/bench_lite_whitening]

Writes ``benchmarks/results/lite_whitening.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from dnsvr.backbones import FeatureExtractor, PCAWhitening
from dnsvr.demo import DEMO_TRANSFORMS
from dnsvr.eval.metrics import average_precision
from dnsvr.nn.similarity import chamfer_video_similarity
from dnsvr.synthetic import SyntheticCollection, make_collection
from dnsvr.video import read_frames

logger = logging.getLogger("bench_lite_whitening")
RESULTS = Path(__file__).resolve().parent / "results" / "lite_whitening.json"


def _l2(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    return average_precision(relevant[order], int(relevant.sum()))


def _measure(coll: SyntheticCollection, feats: dict[str, torch.Tensor]) -> dict[str, float]:
    database = [v for v in feats if v not in coll.queries]
    coarse_db = torch.stack([_l2(_l2(feats[v]).mean((0, 1))) for v in database])
    ap_coarse, ap_fine, margins = [], [], []
    for q in coll.queries:
        relevant = np.array([v in set(coll.positives[q]) for v in database])
        coarse = (coarse_db @ _l2(_l2(feats[q]).mean((0, 1)))).numpy()
        fine = np.array([float(chamfer_video_similarity(feats[q], feats[v])) for v in database])
        ap_coarse.append(_ap(coarse, relevant))
        ap_fine.append(_ap(fine, relevant))
        margins.append(float(fine[relevant].min() - fine[~relevant].max()))
    return {"coarse_mAP": float(np.mean(ap_coarse)), "fine_mAP": float(np.mean(ap_fine)),
            "margin_mean": float(np.mean(margins)), "margin_min": float(np.min(margins))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_lite_whitening"))
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256, 400, 512])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)

    root = args.workdir / "collection"
    if (root / "collection.json").exists():
        coll = SyntheticCollection.load(root)
    else:
        coll = make_collection(root, n_originals=4, n_distractors=6, transforms=DEMO_TRANSFORMS, seconds=12.0)
    extractor = FeatureExtractor("efficientnet_lite0")
    start = time.perf_counter()
    raw = {vid: extractor.extract(read_frames(path)[0]) for vid, path in coll.videos.items()}
    logger.info("extracted %d videos in %.1f s", len(raw), time.perf_counter() - start)
    vectors = torch.cat([r.reshape(-1, r.shape[-1]) for r in raw.values()]).numpy()

    rows = [{"dims": None, "vectors_per_dim": None, **_measure(coll, {k: _l2(v) for k, v in raw.items()})}]
    for dims in args.dims:
        if dims > min(vectors.shape):
            continue
        white = PCAWhitening(dims=dims).fit(vectors)
        whitened = {k: white(v) for k, v in raw.items()}
        rows.append({"dims": dims, "vectors_per_dim": round(len(vectors) / dims, 1), **_measure(coll, whitened)})
    for row in rows:
        logger.info("dims %-5s vectors/dim %-6s coarse mAP %.3f  fine mAP %.3f  margin mean %.3f min %.3f",
                    row["dims"] or "none", row["vectors_per_dim"] or "-", row["coarse_mAP"], row["fine_mAP"],
                    row["margin_mean"], row["margin_min"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"region_vectors": int(len(vectors)), "region_dims": int(vectors.shape[1]),
                                   "videos": len(raw), "rows": rows}, indent=2))
    logger.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
