"""Small generated collections and bundles shared by the index, search and CLI tests (no decoding)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from dnsvr import nn
from dnsvr.bundle import Bundle

DIMS = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_collection(seed: int = 0, n_groups: int = 6, copies: int = 2, n_distractors: int = 8):
    """Videos as base features: groups of near copies (noisy, trimmed, sped up) and distractors."""
    rng = np.random.default_rng(seed)
    videos: dict[str, np.ndarray] = {}
    groups: dict[str, list[str]] = {}
    for g in range(n_groups):
        t = int(rng.integers(8, 20))
        base = _unit(rng.standard_normal((t, 9, DIMS)))
        videos[f"g{g}"] = base
        groups[f"g{g}"] = []
        for c in range(copies):
            noisy = _unit(base + 0.35 * rng.standard_normal(base.shape))
            if c % 2 == 1:
                noisy = noisy[::2]  # sped up 2x
            videos[f"g{g}_c{c}"] = noisy
            groups[f"g{g}"].append(f"g{g}_c{c}")
    for d in range(n_distractors):
        videos[f"d{d}"] = _unit(rng.standard_normal((int(rng.integers(5, 25)), 9, DIMS)))
    return videos, groups


def write_h5(path: Path, videos: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for vid, x in videos.items():
            f.create_dataset(vid, data=x)
    return path


def plain_bundle() -> Bundle:
    return Bundle("plain", "efficientnet_lite0", whitening=None, fine_type="chamfer", fine_args={"dims": DIMS})


def student_bundle(fine_type: str = "att", dims: int = 64, seed: int = 0) -> Bundle:
    """A bundle of randomly initialised students and selector (small sizes), no whitening."""
    torch.manual_seed(seed)
    fine_args = {"dims": dims, "attention": fine_type == "att", "binarization": fine_type == "bin"}
    coarse_args = {"dims": dims, "transformer_heads": 4, "transformer_feedforward_dims": 64,
                   "netvlad_clusters": 4, "netvlad_outdims": 32}
    selector_args = {"dims": dims, "hidden_size": 16, "num_layers": 1}
    return Bundle(f"test-{fine_type}", "efficientnet_lite0", fine_type=fine_type,
                  fine_net=nn.FineGrainedStudent(**fine_args), fine_args=fine_args, coarse_type="student",
                  coarse_net=nn.CoarseGrainedStudent(**coarse_args), coarse_args=coarse_args,
                  selector_net=nn.SelectorNetwork(**selector_args), selector_args=selector_args)


def assert_same_results(a, b, tol=1e-6):
    """Ids and order equal, every score within ``tol``, segments equal."""
    assert len(a) == len(b)
    for qa, qb in zip(a, b):
        assert qa.query == qb.query
        assert [r.video_id for r in qa.results] == [r.video_id for r in qb.results], qa.query
        assert qa.fine_pairs == qb.fine_pairs and qa.candidates == qb.candidates
        for x, y in zip(qa.results, qb.results):
            assert x.stage == y.stage
            assert abs(x.score - y.score) <= tol and abs(x.coarse_score - y.coarse_score) <= tol
            for u, v in ((x.fine_score, y.fine_score), (x.selector_score, y.selector_score)):
                assert (u is None) == (v is None) and (u is None or abs(u - v) <= tol)
            assert [s.to_dict() for s in x.segments] == [s.to_dict() for s in y.segments]
            assert x.source == y.source
        assert not qa.missing_shards and not qb.missing_shards


def indexed_clips(root: Path, videos: int = 8) -> Path:
    """``root/videos/v<i>.mp4`` (6 s generated clips, 128×72 at 4 fps) added to a new lite index ``root/idx``."""
    from typer.testing import CliRunner

    from dnsvr import synthetic
    from dnsvr.cli import app

    (root / "videos").mkdir()
    for i in range(videos):
        synthetic.write_video(root / "videos" / f"v{i}.mp4",
                              synthetic.render_clip(i, seconds=6, fps=4, size=(128, 72)), fps=4)
    runner = CliRunner()
    assert runner.invoke(app, ["index", "create", str(root / "idx")]).exit_code == 0
    res = runner.invoke(app, ["index", "add", str(root / "idx"), str(root / "videos"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root
