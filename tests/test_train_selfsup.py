"""The self-supervised teacher (dnsvr.train.selfsup): the all-pairs similarity is the network's own, InfoNCE
learns the made positives, a resumed run ends bit-identical, the run loads as a teacher and as a student;
mining keeps known copies as positives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_h5

from dnsvr.features import FeatureFile
from dnsvr.train.mining import POSITIVE, MinedPairs, MiningParams, mine
from dnsvr.train.selfsup import (TeacherTrainConfig, all_pairs_similarity, copy_id, info_nce, train_teacher,
                                 views_of)
from dnsvr.train.students import build_student, load_student
from dnsvr.train.teachers import load_state_dict, load_teacher

DIMS = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _collection(path, n: int = 10, copies: int = 2, seed: int = 0):
    """``n`` random videos and ``copies`` noisy, re-timed copies of each."""
    rng = np.random.default_rng(seed)
    videos = {}
    for i in range(n):
        x = _unit(rng.normal(size=(int(rng.integers(8, 14)), 9, DIMS)))
        videos[f"v{i}"] = x
        for k in range(copies):
            y = x[::-1] if k % 2 else x[1:]
            videos[copy_id(f"v{i}", k)] = _unit(y + 0.4 * rng.normal(size=y.shape))
    return write_h5(path, videos)


def test_views_of_groups_copies():
    ids = ["a", copy_id("a", 0), "b", copy_id("a", 1), copy_id("zz", 0)]
    assert views_of(ids) == {"a": ["a", copy_id("a", 0), copy_id("a", 1)], "b": ["b"]}


def test_all_pairs_similarity_is_the_networks():
    torch.manual_seed(0)
    model = build_student("fg-att", DIMS).eval()
    rng = np.random.default_rng(1)
    a = [torch.from_numpy(_unit(rng.normal(size=(t, 9, DIMS)))) for t in (8, 12, 9)]
    b = [torch.from_numpy(_unit(rng.normal(size=(t, 9, DIMS)))) for t in (8, 11)]
    from dnsvr.train.data import pad_videos

    xa, ma = pad_videos(a)
    xb, mb = pad_videos(b)
    with torch.no_grad():
        s, reg = all_pairs_similarity(model, model.index_video(xa, ma), model.index_video(xb, mb), ma, mb)
        assert s.shape == (3, 2) and float(reg) >= 0
        for i in range(3):
            for j in range(2):
                one = model.calculate_video_similarity(model.index_video(xa[i:i + 1], ma[i:i + 1]),
                                                       model.index_video(xb[j:j + 1], mb[j:j + 1]),
                                                       ma[i:i + 1], mb[j:j + 1])
                assert float(one) == pytest.approx(float(s[i, j]), abs=1e-5)


def test_info_nce_prefers_the_diagonal():
    good = torch.eye(4) * 1.0
    bad = 1.0 - torch.eye(4)
    assert float(info_nce(good, 0.1)) < 0.01 < float(info_nce(bad, 0.1))


def test_teacher_learns_the_copies_and_resumes_bit_identical(tmp_path):
    feats = _collection(tmp_path / "c.h5")
    with FeatureFile(feats) as ff:
        views = views_of(ff.ids())
    cfg = TeacherTrainConfig(epochs=4, batch_size=5, learning_rate=1e-3, max_frames=12, start="random")
    full = train_teacher(feats, views, tmp_path / "full", cfg, progress=False)
    part = train_teacher(feats, views, tmp_path / "part", cfg, progress=False, stop_after_epochs=2)
    assert not part.config["finished"]
    resumed = train_teacher(feats, views, tmp_path / "part", cfg, resume=True, progress=False)
    assert resumed.config["finished"] and len(resumed.history) == 4
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = full.history
    assert hist[-1]["info_nce"] < hist[0]["info_nce"]
    assert hist[-1]["positive"] - hist[-1]["negative"] > hist[0]["positive"] - hist[0]["negative"]
    # the run folder loads as a student, as a teacher, and as a student's initial weights
    model, cfg_json = load_student(tmp_path / "full")
    assert cfg_json["network"]["type"] == "fg-att" and cfg_json["teacher"]["kind"] == "selfsup"
    teacher = load_teacher(str(tmp_path / "full"), dims=DIMS)
    assert set(load_state_dict(tmp_path / "full")) == set(model.state_dict())
    with pytest.raises(ValueError, match="another config"):
        train_teacher(feats, views, tmp_path / "part", TeacherTrainConfig(epochs=5, batch_size=5), resume=True,
                      progress=False)
    # mining with the teacher keeps every video's copies as its positives
    partners = {v: [o for o in vs if o != v] for vs in views.values() for v in vs}
    out = mine(feats, tmp_path / "pairs.h5", teacher, MiningParams(candidates=4, positives=1, random_negatives=2),
               progress=False, partners=partners)
    pairs = MinedPairs(out)
    ids = pairs.video_ids
    for row in range(len(pairs)):
        a_id, o_id = ids[pairs.anchor[row]], ids[pairs.other[row]]
        if o_id in partners[a_id]:
            assert pairs.kind[row] == POSITIVE
    for vid, others in partners.items():
        got = {ids[o] for a, o in zip(pairs.anchor, pairs.other) if ids[a] == vid}
        assert set(others) <= got


def test_chamfer_start_computes_about_the_training_free_similarity():
    from dnsvr.nn.similarity import chamfer_video_similarity
    from dnsvr.train.selfsup import chamfer_start

    torch.manual_seed(0)
    model = build_student("fg-att", DIMS)
    chamfer_start(model)
    model.eval()
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 9, DIMS))
    vids = [base, base + 0.5 * rng.normal(size=base.shape), base + 1.5 * rng.normal(size=base.shape),
            rng.normal(size=(20, 9, DIMS)), rng.normal(size=(12, 9, DIMS))]
    vids = [torch.from_numpy(_unit(v)) for v in vids]
    with torch.no_grad():
        q = model.index_video(vids[0])
        net = [float(model.calculate_video_similarity(q, model.index_video(v))) for v in vids]
    free = [float(chamfer_video_similarity(vids[0], v)) for v in vids]
    assert net[0] == pytest.approx(1.0, abs=1e-4)
    assert np.argsort(net).tolist()[-3:] == np.argsort(free).tolist()[-3:]      # same order of the related ones
    assert max(abs(a - b) for a, b in zip(net, free)) < 0.2
    with pytest.raises(ValueError, match="start"):
        train_teacher("unused.h5", {}, "unused", TeacherTrainConfig(start="zero"))
