"""Unit tests of the training pieces: augmentation, mining (format, pools, resume), checkpoints, ITQ,
resume determinism (bit-exact on CPU), selector labels, export."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from train_synthetic import make_collection

from dnsvr.train import augment
from dnsvr.train.checkpoint import optimizer_from_flat, optimizer_to_flat
from dnsvr.train.itq import fit_itq
from dnsvr.train.mining import (HARD_NEGATIVE, POSITIVE, RANDOM_NEGATIVE, MinedPairs, MiningError, MiningParams,
                                mine)
from dnsvr.train.selector import selector_labels, share_threshold


def _frames(t: int) -> np.ndarray:
    return np.arange(t, dtype=np.float32)[:, None, None] * np.ones((1, 9, 4), np.float32)


def _ids(x: np.ndarray) -> list[int]:
    return [int(v) for v in x[:, 0, 0]]


def test_augment_operations():
    rng = np.random.default_rng(0)
    x = _frames(40)
    dropped_some = shuffled_some = False
    for _ in range(30):
        d = _ids(augment.drop_windows(x, rng))
        assert 0 < len(d) <= 40 and d == sorted(d) and len(set(d)) == len(d)
        # what is missing comes in whole windows of one size in [4, 16] aligned to the video's start
        missing = sorted(set(range(40)) - set(d))
        if missing:
            dropped_some = True
            runs = np.split(np.array(missing), np.flatnonzero(np.diff(missing) > 1) + 1)
            assert all(len(r) >= 4 or r[-1] == 39 for r in runs), runs
        s = _ids(augment.shuffle_windows(x, rng))
        assert sorted(s) == list(range(40))  # every frame kept
        # the result is consecutive stretches (windows) of the original, in another order
        stretches = np.split(np.array(s), np.flatnonzero(np.diff(s) != 1) + 1)
        assert all(len(r) >= 4 or 39 in r for r in stretches), stretches
        shuffled_some |= s != list(range(40))
    assert dropped_some and shuffled_some
    assert np.array_equal(augment.drop_windows(_frames(4), rng), _frames(4))
    assert _ids(augment.keep_every_second(x, rng)) in (list(range(0, 40, 2)), list(range(1, 40, 2)))
    assert _ids(augment.duplicate_frames(x, rng)) == [i // 2 for i in range(80)]
    assert len(augment.duplicate_frames(_frames(200), rng)) == 200  # would exceed 300 frames
    assert _ids(augment.reverse(x, rng)) == list(range(39, -1, -1))
    assert len(augment.clip_length(_frames(500))) == augment.MAX_FRAMES


def test_augment_video_is_repeatable_and_bounded():
    x = _frames(350)
    a = augment.augment_video(x, np.random.default_rng(7), probability=1.0)
    b = augment.augment_video(x, np.random.default_rng(7), probability=1.0)
    assert np.array_equal(a, b) and len(a) <= 300 and a.shape[1:] == (9, 4)
    assert np.array_equal(augment.augment_video(_frames(1), np.random.default_rng(0), 1.0), _frames(1))
    # as the reference: videos of 8 frames or less are never augmented
    for seed in range(20):
        assert np.array_equal(augment.augment_video(_frames(8), np.random.default_rng(seed), 1.0), _frames(8))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.augment_video(x, np.random.default_rng(0), operations=["zoom"])


class _DotTeacher:
    """A teacher that needs no network: mean frame vector dot product (deterministic)."""

    identity = {"kind": "dot-test"}

    def prepare(self, features):
        v = features.reshape(-1, features.shape[-1]).mean(0)
        return v / np.linalg.norm(v)

    def similarities(self, query, targets):
        return np.array([float(query @ t) for t in targets], np.float32)


def test_mining_pools_and_format(tmp_path):
    feats = tmp_path / "f.h5"
    make_collection(feats, n_sources=5, copies=2, distractors=5, dims=16, seed=3)
    params = MiningParams(candidates=6, positives=2, random_negatives=4, seed=1)
    out = mine(feats, tmp_path / "p.h5", _DotTeacher(), params, progress=False)
    mp = MinedPairs(out)
    n = len(mp.video_ids)
    assert mp.complete and len(mp) == n * (6 + 4)
    with h5py.File(out, "r") as h5:
        assert h5.attrs["format"] == "dnsvr-mined-pairs" and h5["done"][()].all()
        cands = h5["candidates"][()]
    for a in range(n):
        rows = np.flatnonzero(mp.anchor == a)
        kinds, others, sims = mp.kind[rows], mp.other[rows], mp.similarity[rows]
        assert a not in others
        assert (kinds == POSITIVE).sum() == 2 and (kinds == HARD_NEGATIVE).sum() == 4
        assert set(others[kinds != RANDOM_NEGATIVE]) == set(cands[a])
        assert not set(others[kinds == RANDOM_NEGATIVE]) & set(cands[a])
        assert sims[kinds == POSITIVE].min() >= sims[kinds == HARD_NEGATIVE].max()
    pools = mp.pools()
    assert set(pools) == set(range(n))


def test_mining_resume_equals_uninterrupted(tmp_path):
    feats = tmp_path / "f.h5"
    make_collection(feats, n_sources=4, copies=2, distractors=6, dims=16, seed=4)
    params = MiningParams(candidates=5, positives=2, random_negatives=3, seed=2)
    full = MinedPairs(mine(feats, tmp_path / "full.h5", _DotTeacher(), params, progress=False, chunk_size=4))

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        mine(feats, tmp_path / "part.h5", _DotTeacher(), params, progress=False, chunk_size=4, on_chunk=stop)
    assert not MinedPairs(tmp_path / "part.h5").complete
    with pytest.raises(MiningError, match="other parameters"):
        mine(feats, tmp_path / "part.h5", _DotTeacher(), MiningParams(candidates=4), progress=False)
    part = MinedPairs(mine(feats, tmp_path / "part.h5", _DotTeacher(), params, progress=False, chunk_size=4))
    order_f = np.lexsort((full.other, full.anchor))
    order_p = np.lexsort((part.other, part.anchor))
    for name in ("anchor", "other", "similarity", "kind"):
        assert np.array_equal(getattr(full, name)[order_f], getattr(part, name)[order_p]), name


def test_optimizer_state_roundtrip():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    opt2 = torch.optim.Adam(model.parameters(), lr=1.0)
    opt2.load_state_dict(optimizer_from_flat(tensors, meta))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, v in a["state"][k].items():
            assert torch.equal(v, b["state"][k][name])


def test_itq_reduces_quantisation_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)) @ rng.standard_normal((16, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = fit_itq(x, bits=8, iterations=30)
    assert w.shape == (16, 8)
    assert np.allclose(w.T @ w, np.eye(8), atol=1e-5)

    def loss(proj):
        z = x @ proj
        return float(np.mean((np.sign(z) - z) ** 2))

    evals, evecs = np.linalg.eigh(x.T @ x)
    pca = evecs[:, np.argsort(evals)[::-1][:8]]
    assert loss(w) < loss(pca)
    with pytest.raises(ValueError, match="bits"):
        fit_itq(x, bits=32)


def test_selector_labels():
    fine = np.array([1.0, -1.0, 0.0, 0.5])
    coarse = np.array([1.0, 0.5, 0.5, 0.5])
    assert selector_labels(fine, coarse, 0.2).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_selector_share_threshold_labels_that_share():
    rng = np.random.default_rng(0)
    fine, coarse = rng.uniform(-1, 1, 1000), rng.uniform(0, 1, 1000)
    for share in (0.05, 0.1, 0.5):
        labels = selector_labels(fine, coarse, share_threshold(fine, coarse, share))
        assert labels.mean() == pytest.approx(share, abs=1.5e-3)
        gap = np.abs(fine / 2 + 0.5 - coarse)  # the positives are the largest disagreements
        assert gap[labels == 1].min() > gap[labels == 0].max()
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="positive_share"):
            share_threshold(fine, coarse, bad)


def test_triplet_batches_prefetch_and_streaming_are_identical(tmp_path):
    from dnsvr.train.data import TripletDataset, VideoStore

    feats = tmp_path / "f.h5"
    make_collection(feats, n_sources=4, copies=2, distractors=4, dims=8, seed=9)
    mp = MinedPairs(mine(feats, tmp_path / "p.h5", _DotTeacher(), MiningParams(candidates=4, positives=2,
                                                                              random_negatives=2),
                         progress=False))

    def epoch_batches(in_memory, prefetch, epoch):
        ds = TripletDataset(mp, VideoStore(feats, mp.video_ids, in_memory=in_memory), seed=5)
        ds.set_epoch(epoch)
        return list(ds.batches(5, prefetch=prefetch))

    ref = epoch_batches(True, 0, 0)
    assert sum(b.similarities.shape[0] for b in ref) == len(mp.video_ids)
    for other in (epoch_batches(True, 3, 0), epoch_batches(False, 2, 0)):
        assert len(other) == len(ref)
        for a, b in zip(ref, other):
            assert torch.equal(a.videos, b.videos) and torch.equal(a.masks, b.masks)
            assert torch.equal(a.similarities, b.similarities)
    # masks mark the real frames; a new epoch draws other positives/negatives or augmentations
    b0 = ref[0]
    assert b0.videos.shape[0] == 3 * b0.similarities.shape[0] and b0.masks.sum(1).min() >= 1
    assert any(not torch.equal(a.videos, b.videos) for a, b in zip(ref, epoch_batches(True, 0, 1))
               if a.videos.shape == b.videos.shape) or len(ref) == 0


def test_random_negatives_sampling():
    from dnsvr.train.mining import _random_others

    for n, exclude, k in ((1_000_000, {1, 2, 3}, 8), (12, set(range(8)), 8), (5, {0, 1, 2, 3, 4}, 3)):
        a = _random_others(np.random.default_rng([4, 2]), n, exclude, k)
        b = _random_others(np.random.default_rng([4, 2]), n, exclude, k)
        assert a == b and len(a) == len(set(a)) == min(k, n - len(exclude))
        assert not set(a) & exclude and all(0 <= v < n for v in a)


def test_load_teacher_names():
    from dnsvr.train.teachers import ChamferTeacher, load_teacher

    assert isinstance(load_teacher("auto", dims=512), ChamferTeacher)
    assert isinstance(load_teacher("chamfer"), ChamferTeacher)
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("no-such-teacher")


def test_itq_files_roundtrip(tmp_path):
    from dnsvr.train.itq import load_itq, save_itq

    w = fit_itq(np.random.default_rng(1).standard_normal((300, 8)), bits=8, iterations=5)
    assert np.array_equal(load_itq(save_itq(tmp_path / "itq.npz", w)), w)
    torch.save({"proj": torch.from_numpy(w)}, tmp_path / "itq.pth")  # the published layout
    assert np.array_equal(load_itq(tmp_path / "itq.pth"), w)
    np.savez(tmp_path / "bad.npz", other=w)
    with pytest.raises(ValueError, match="no 'proj'"):
        load_itq(tmp_path / "bad.npz")


def _clustered_collection(path, centres: np.ndarray, videos: int = 12, frames: int = 10, seed: int = 0) -> list[str]:
    """Videos whose frames each sit near one of ``centres`` (all 9 regions: the frame vector is that centre)."""
    rng = np.random.default_rng(seed)
    ids = []
    with h5py.File(path, "w") as h5:
        for v in range(videos):
            which = rng.integers(0, len(centres), frames)
            x = centres[which][:, None, :] + 0.05 * rng.standard_normal((frames, 9, centres.shape[1]))
            h5.create_dataset(f"v{v:02d}", data=(x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32))
            ids.append(f"v{v:02d}")
    return ids


def test_netvlad_kmeans_init_finds_the_collections_clusters(tmp_path):
    from dnsvr.train.data import VideoStore
    from dnsvr.train.students import (NETVLAD_ASSIGNMENT_RATIO, StudentTrainConfig, fit_initialisation,
                                      initial_student)

    rng = np.random.default_rng(3)
    centres = np.linalg.qr(rng.standard_normal((16, 4)))[0].T  # 4 orthonormal directions in 16-d
    ids = _clustered_collection(tmp_path / "f.h5", centres)
    net = {"attention": False, "transformer": False, "netvlad_clusters": 4, "netvlad_outdims": 8}
    cfg = StudentTrainConfig(type="cg", seed=1, network=net)
    store = VideoStore(tmp_path / "f.h5", ids)
    model = initial_student(cfg, 16)
    info = fit_initialisation(model, cfg, tmp_path / "f.h5", store)
    assert info["netvlad_init"] == "kmeans" and info["netvlad_vectors"] == 120
    found = model.netvlad.centroids.detach().numpy()
    found = found / np.linalg.norm(found, axis=1, keepdims=True)
    match = found @ centres.T  # every fitted centre is one true centre, each true centre found once
    assert sorted(match.argmax(1).tolist()) == [0, 1, 2, 3] and match.max(1).min() > 0.99
    # assignments: the right cluster, and sharp (nearest/second weight ratio ≈ NETVLAD_ASSIGNMENT_RATIO)
    w = model.netvlad.conv.weight.detach().numpy()[:, :, 0, 0]
    logits = centres @ w.T
    assert np.array_equal(logits.argmax(1), match.argmax(0))
    top2 = -np.sort(-logits, axis=1)[:, :2]
    ratio = np.exp(np.mean(top2[:, 0] - top2[:, 1]))
    assert 0.3 * NETVLAD_ASSIGNMENT_RATIO < ratio < 3 * NETVLAD_ASSIGNMENT_RATIO
    # deterministic for a seed; "random" keeps the reference's random clusters untouched
    again = initial_student(cfg, 16)
    fit_initialisation(again, cfg, tmp_path / "f.h5", store)
    assert torch.equal(again.netvlad.centroids, model.netvlad.centroids)
    plain_cfg = StudentTrainConfig(type="cg", seed=1, network=net, netvlad_init="random")
    plain = initial_student(plain_cfg, 16)
    assert fit_initialisation(plain, plain_cfg, tmp_path / "f.h5", store) == {}
    assert torch.equal(plain.netvlad.centroids, initial_student(plain_cfg, 16).netvlad.centroids)
    with pytest.raises(ValueError, match="netvlad_init"):
        fit_initialisation(plain, StudentTrainConfig(type="cg", network=net, netvlad_init="pca"), tmp_path / "f.h5",
                           store)
    store.close()


def test_coarse_bias_fit_is_the_l1_optimum_and_keeps_the_order(tmp_path):
    from dnsvr.train.data import VideoStore, coarse_target
    from dnsvr.train.students import (StudentTrainConfig, fit_coarse_bias, fit_initialisation, initial_student,
                                      pair_similarities, pearson)

    feats = tmp_path / "f.h5"
    make_collection(feats, n_sources=6, copies=2, distractors=6, dims=16, seed=5)
    mine(feats, tmp_path / "p.h5", "chamfer", MiningParams(candidates=5, positives=2, random_negatives=3, seed=0),
         progress=False)
    pairs = MinedPairs(tmp_path / "p.h5")
    store = VideoStore(feats, pairs.video_ids)
    net = {"transformer_feedforward_dims": 32, "netvlad_clusters": 4, "netvlad_outdims": 32}
    cfg = StudentTrainConfig(type="cg", seed=2, network=net)
    idx = np.stack([pairs.anchor, pairs.other], 1)
    target = coarse_target(pairs.similarity)
    model = initial_student(cfg, 16)
    before = pair_similarities(model, "cg", store, idx)
    info = fit_initialisation(model, cfg, feats, store, pairs)
    assert info["netvlad_init"] == "kmeans" and info["coarse_bias_pairs"] == len(pairs)
    b = info["coarse_bias"]
    assert torch.allclose(model.netvlad.norm.bias, torch.full_like(model.netvlad.norm.bias, b))

    def l1_at(bias: float) -> float:
        with torch.no_grad():
            model.netvlad.norm.bias.fill_(bias)
        return float(np.abs(pair_similarities(model, "cg", store, idx) - target).mean())

    fitted = l1_at(b)
    assert fitted == pytest.approx(info["coarse_bias_l1"], abs=1e-4)  # the closed form is the network's L1
    assert fitted < l1_at(b - 0.05) and fitted < l1_at(b + 0.05) and fitted < l1_at(1.0)
    # the same k-means start with bias 0: the fit is an affine map of its similarities, so their order is kept
    plain = initial_student(StudentTrainConfig(type="cg", seed=2, network=net, fit_coarse_bias=False), 16)
    assert "coarse_bias" not in fit_initialisation(plain, StudentTrainConfig(type="cg", seed=2, network=net,
                                                                             fit_coarse_bias=False), feats, store, pairs)
    with torch.no_grad():
        plain.netvlad.norm.bias.zero_()
    centred = pair_similarities(plain, "cg", store, idx)
    with torch.no_grad():
        model.netvlad.norm.bias.fill_(b)
    # (up to the LayerNorm's eps, which shrinks the centred vectors' norm by a factor var / (var + 1e-5))
    np.testing.assert_allclose(pair_similarities(model, "cg", store, idx), (centred + b * b) / (1 + b * b), atol=1e-3)
    assert pearson(centred, target) == pytest.approx(pearson(pair_similarities(model, "cg", store, idx), target),
                                                     abs=1e-3)
    assert not np.allclose(before, pair_similarities(model, "cg", store, idx), atol=1e-3)
    # anchors restrict the pairs; targets below every similarity clip the bias at the reference's 0
    some = sorted(set(pairs.anchor.tolist()))[:3]
    assert fit_coarse_bias(model, store, pairs, some)["coarse_bias_pairs"] == int(np.isin(pairs.anchor, some).sum())
    pairs.similarity = np.full_like(pairs.similarity, -1.0)
    assert fit_coarse_bias(model, store, pairs)["coarse_bias"] == 0.0
    store.close()
