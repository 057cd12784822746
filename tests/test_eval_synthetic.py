"""Synthetic feature-level benchmarks: layout, ground truth, and that the near-duplicates are findable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dnsvr.eval import CustomBenchmark
from dnsvr.eval.synthetic import TRANSFORMS, make_synthetic_benchmark, random_video, transform_video
from dnsvr.features import FeatureFile
from dnsvr.nn.similarity import chamfer_video_similarity


def test_layout_and_ground_truth(tmp_path: Path) -> None:
    bench = make_synthetic_benchmark(tmp_path, n_queries=2, n_near_duplicates=5, n_distractors=6, dims=32, seed=1)
    gt = json.loads(bench.ground_truth_path.read_text())
    assert gt == bench.ground_truth and sorted(gt) == bench.queries
    assert all(len(v) == 5 and set(v.values()) == {"ND"} for v in gt.values())
    assert sorted(bench.transforms.values()) == sorted(TRANSFORMS * 2)
    with FeatureFile(bench.features) as ff:
        assert sorted(ff.ids()) == sorted(bench.queries + bench.database)
        for vid in ff.ids():
            x = ff.read(vid)
            assert x.ndim == 3 and x.shape[1:] == (9, 32) and x.dtype == np.float32
            assert np.allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-5)
    again = make_synthetic_benchmark(tmp_path / "again", n_queries=2, n_near_duplicates=5, n_distractors=6,
                                     dims=32, seed=1)
    with FeatureFile(bench.features) as a, FeatureFile(again.features) as b:
        assert all(np.array_equal(a.read(v), b.read(v)) for v in a.ids())


def test_near_duplicates_rank_first_with_a_video_similarity(tmp_path: Path) -> None:
    bench = make_synthetic_benchmark(tmp_path, n_queries=3, n_near_duplicates=5, n_distractors=12, dims=64, seed=2)
    with FeatureFile(bench.features) as ff:
        feats = {v: ff.read(v) for v in ff.ids()}
    sims = {q: {v: float(chamfer_video_similarity(feats[q], feats[v])) for v in bench.database}
            for q in bench.queries}
    assert CustomBenchmark(bench.ground_truth, ["ND"]).evaluate(sims) == {"mAP": 1.0}
    rng = np.random.default_rng(0)
    shuffled = {q: {v: float(rng.random()) for v in res} for q, res in sims.items()}
    assert CustomBenchmark(bench.ground_truth, ["ND"]).evaluate(shuffled)["mAP"] < 0.9


def test_transform_shapes_and_errors() -> None:
    rng = np.random.default_rng(0)
    video = random_video(rng, 10, 16)
    assert transform_video(video, "noise", rng).shape == video.shape
    assert transform_video(video, "speed", rng).shape == (5, 9, 16)
    assert 4 <= transform_video(video, "crop", rng).shape[0] < 10
    assert transform_video(video, "shift", rng).shape[0] > 10
    with pytest.raises(ValueError, match="noise"):
        transform_video(video, "rotate", rng)
    with pytest.raises(ValueError):
        make_synthetic_benchmark("unused", frames=(4, 12))
