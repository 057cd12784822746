"""The learned whitening (``dnsvr train whitening``): the fit, the folded whitening, attach, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dnsvr.backbones import PCAWhitening
from dnsvr.cli import app
from helpers import indexed_clips
from dnsvr.train.learned_whitening import LearnedWhiteningError, fit_chunk_map, fit_learned_whitening, matching_pairs
from dnsvr.train.selfsup import copy_id


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_followed_by_folds_into_one_whitening_and_relative_to_recovers_the_map(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 40)).astype(np.float32)
    base = PCAWhitening(dims=16).fit(x)
    p = rng.standard_normal((16, 16))
    folded = base.followed_by(p)
    expected = base.apply(x[:50]) @ p
    np.testing.assert_allclose(folded.apply(x[:50]), _unit(expected), atol=1e-5)
    np.testing.assert_allclose(folded.relative_to(base), p, atol=1e-4)
    assert PCAWhitening(dims=16).fit(x[:1500] + 1.0).relative_to(base) is None  # another mean
    assert PCAWhitening(dims=16).fit(x[1500:]).relative_to(base) is None        # another basis
    again = PCAWhitening.from_file(folded.save(tmp_path / "w.safetensors"))
    assert again.identity == folded.identity
    np.testing.assert_allclose(again.apply(x[:5]), folded.apply(x[:5]), atol=1e-6)


def test_matching_pairs_are_mutual_best_matches_above_the_threshold() -> None:
    a = np.eye(4, dtype=np.float32)[:, None, :]                      # 4 frames, one region each
    b = _unit(np.array([[1, 0.2, 0, 0], [0, 0, 1, 0.1], [0, 0, 0.2, 1], [1, 1, 0, 0]], np.float32))[:, None, :]
    d = matching_pairs(a, b, threshold=0.5)
    # frame 0 ↔ copy 0 (the copy's row 3 matches frame 0 less well), frames 2 and 3 ↔ copies 1 and 2
    assert len(d) == 3
    np.testing.assert_allclose(d[0], a[0, 0] - b[0, 0], atol=1e-6)
    assert len(matching_pairs(a, b, threshold=0.999)) == 0


def test_matching_pairs_in_blocks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import dnsvr.train.learned_whitening as lw

    rng = np.random.default_rng(4)
    video = _unit(rng.standard_normal((11, 9, 8)))
    copy = _unit(video[2:] + 0.3 * rng.standard_normal((9, 9, 8)))
    whole = matching_pairs(video, copy, threshold=0.2)
    monkeypatch.setattr(lw, "PAIR_BLOCK", 7)  # blocks of 7 regions a side, short last blocks
    blocked = matching_pairs(video, copy, threshold=0.2)
    assert len(whole) > 20
    np.testing.assert_array_equal(blocked, whole)


def test_copy_retrieval_map_is_the_mean_reciprocal_rank_of_each_copys_original() -> None:
    from dnsvr.bundle import Bundle
    from dnsvr.train.learned_whitening import copy_retrieval_map

    bundle = Bundle("plain", "efficientnet_lite0", whitening=None, fine_type="chamfer", fine_args={"dims": 8})
    e = np.eye(8, dtype=np.float32)
    videos = {"a": np.stack([e[0]] * 3)[:, None, :], "b": np.stack([e[1]] * 3)[:, None, :],
              "c": np.stack([_unit(e[0] + e[1])] * 3)[:, None, :]}
    copies = {copy_id("a", 0): videos["a"],                  # its original first: 1
              copy_id("b", 0): np.stack([_unit(e[1] + 0.9 * e[0])] * 3)[:, None, :]}  # c above b: 1/2
    assert copy_retrieval_map(bundle, videos, copies) == pytest.approx(0.75)
    # the map is applied to every video first: without the second axis b's copy looks like a and c
    drop = np.diag([1, 0, 1, 1, 1, 1, 1, 1]).astype(np.float64)
    only_b = {copy_id("b", 0): copies[copy_id("b", 0)]}
    assert copy_retrieval_map(bundle, videos, only_b) == pytest.approx(0.5)
    assert copy_retrieval_map(bundle, videos, only_b, conversion=drop) == pytest.approx(1 / 3)


def test_learned_whitening_discounts_what_the_copies_change() -> None:
    # each video's regions: its content in 12 dims, plus a strong nuisance in 4 dims that changes in
    # every copy (like a colour cast): the PCA keeps both, the learned map should drop the nuisance
    rng = np.random.default_rng(1)
    dims, n = 16, 60
    content = rng.standard_normal((n, 5, 9, 12)) * 0.6
    def view(nuisance_scale: float) -> np.ndarray:
        nuisance = rng.standard_normal((n, 1, 1, 4)) * nuisance_scale
        return _unit(np.concatenate([content, np.broadcast_to(nuisance, (n, 5, 9, 4))], -1))
    originals, copies = view(1.5), view(1.5)
    videos = {f"v{i}": originals[i] for i in range(n)}
    copy_feats = {copy_id(f"v{i}", 0): copies[i] for i in range(n)}
    learned = fit_learned_whitening(videos, copy_feats, threshold=0.0, shrinkage=0.1)
    assert learned.matrix.shape == (dims, dims) and learned.videos == learned.copies >= n - 3

    def top1(mapped: bool) -> float:
        o = originals.reshape(n, -1, dims) @ (learned.matrix if mapped else np.eye(dims))
        c = copies.reshape(n, -1, dims) @ (learned.matrix if mapped else np.eye(dims))
        vo, vc = _unit(_unit(o).mean(1)), _unit(_unit(c).mean(1))
        return float(np.mean((vc @ vo.T).argmax(1) == np.arange(n)))

    assert top1(False) < 0.9 and top1(True) > top1(False) + 0.05
    # the nuisance dimensions weigh far less than the content's after the map
    gain = np.linalg.norm(learned.matrix, axis=1)
    assert gain[12:].max() < 0.5 * gain[:12].min()
    with pytest.raises(LearnedWhiteningError, match="too few"):
        fit_learned_whitening({"v0": originals[0]}, {copy_id("v0", 0): copies[0]}, threshold=0.99)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return indexed_clips(tmp_path_factory.mktemp("learned"))


def test_train_whitening_then_attach(collection: Path, tmp_path: Path) -> None:
    from dnsvr.bundle import load_bundle
    from dnsvr.index import VideoIndex

    runner = CliRunner()
    res = runner.invoke(app, ["train", "whitening", str(collection / "idx"), "-o", str(tmp_path / "bundle"),
                              "--copies", "2", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["videos"] == 8 and doc["copies"] == 16 and doc["pairs"] > 0
    learned = load_bundle(tmp_path / "bundle")
    with VideoIndex.open(collection / "idx", readonly=True) as old:
        base = old.bundle
        ids = old.ids()
        old_fine = [np.asarray(f, np.float32) for f in old.store.fine(ids)]
    # the index's own bundle (scoring, coarse chunks), its whitening followed by the learned map
    assert learned.name == "lite-learned" and learned.coarse_type == base.coarse_type
    assert learned.scoring == base.scoring
    p = learned.whitening.relative_to(base.whitening)
    assert p is not None and not np.allclose(p, np.eye(len(p)), atol=0.05)
    assert learned.extra["learned_whitening"]["pairs"] == doc["pairs"]
    assert learned.refit_problem() is not None and "learned" in learned.refit_problem()
    res = runner.invoke(app, ["index", "attach", str(collection / "idx"), str(tmp_path / "bundle"),
                              str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    with VideoIndex.open(tmp_path / "new", readonly=True) as new:
        assert new.ids() == ids
        for stored, old_f in zip(new.store.fine(ids), old_fine):
            np.testing.assert_allclose(np.asarray(stored, np.float32), _unit(old_f @ p.astype(np.float32)), atol=2e-3)
        assert new.info()["learned_whitening"]["pairs"] == doc["pairs"]
        hits = new.search([str(collection / "videos" / "v3.mp4")], top_k=1, include_self=True)[0]
        assert hits.results[0].video_id == "v3"
    table = runner.invoke(app, ["index", "info", str(tmp_path / "new")]).stdout
    assert "learned whitening" in table
    # a bundle whose whitening is not a map of the index's cannot attach
    other = load_bundle(tmp_path / "bundle")
    other.whitening = PCAWhitening(dims=base.whitening.dims).fit(
        np.random.default_rng(0).standard_normal((500, base.whitening.input_dims)).astype(np.float32))
    other.save(tmp_path / "other")
    res = runner.invoke(app, ["index", "attach", str(collection / "idx"), str(tmp_path / "other"),
                              str(tmp_path / "new2")])
    assert res.exit_code != 0 and "differs" in res.output + (res.stderr or "")


def test_chunk_map_discounts_what_the_copies_change_at_the_chunk_level() -> None:
    # the same nuisance as above, now one value per video (every chunk of a copy shares it)
    rng = np.random.default_rng(2)
    dims, n = 16, 80
    content = rng.standard_normal((n, 8, 9, 12)) * 0.6
    def view() -> np.ndarray:
        nuisance = rng.standard_normal((n, 1, 1, 4)) * 1.5
        return _unit(np.concatenate([content + 0.1 * rng.standard_normal(content.shape),
                                     np.broadcast_to(nuisance, (n, 8, 9, 4))], -1))
    originals, copies = view(), view()
    videos = {f"v{i}": originals[i] for i in range(n)}
    copy_feats = {copy_id(f"v{i}", 0): copies[i] for i in range(n)}
    matrix, pairs = fit_chunk_map(videos, copy_feats, 4, threshold=0.0, shrinkage=0.1)
    assert matrix is not None and matrix.shape == (dims, dims) and 2 * dims <= pairs <= 4 * n
    gain = np.linalg.norm(matrix, axis=1)
    assert gain[12:].max() < 0.5 * gain[:12].min()
    # a region map is applied before the chunks are formed: the identity changes nothing
    same, _ = fit_chunk_map(videos, copy_feats, 4, region_map=np.eye(dims), threshold=0.0, shrinkage=0.1)
    np.testing.assert_allclose(same, matrix, atol=1e-6)
    # too few pairs: no map (the coarse stage stays plain)
    few, few_pairs = fit_chunk_map({"v0": videos["v0"]}, {copy_id("v0", 0): copy_feats[copy_id("v0", 0)]}, 4,
                                   threshold=0.0)
    assert few is None and 0 < few_pairs < 2 * dims


def test_bundle_with_a_chunk_map_round_trips_and_older_readers_refuse_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import dnsvr.bundle as bundle_mod
    from dnsvr.bundle import Bundle, BundleError, ChunkMap, lite_bundle, lite_chunk_vectors

    rng = np.random.default_rng(3)
    base = lite_bundle()
    base.fit_whitening([rng.standard_normal((40, 9, 96)).astype(np.float32)], dims=32)
    plain_dir = base.save(tmp_path / "plain")
    assert json.loads((plain_dir / "bundle.json").read_text())["format_version"] == 1
    chunk_map = ChunkMap(32)
    chunk_map.matrix.copy_(torch.from_numpy(rng.standard_normal((32, 32)).astype(np.float32)))
    mapped = Bundle("m", base.backbone, whitening=base.whitening, coarse_type="chunks", coarse_net=chunk_map,
                    coarse_args={"chunks": 4, "map_dims": 32}, whitening_dims=32, scoring=base.scoring)
    feats = _unit(rng.standard_normal((10, 9, 32)))
    expected = _unit(lite_chunk_vectors(feats, 4) @ chunk_map.matrix.numpy()).reshape(-1)
    np.testing.assert_allclose(mapped.represent(feats).coarse, expected, atol=1e-5)
    folder = mapped.save(tmp_path / "mapped")
    assert json.loads((folder / "bundle.json").read_text())["format_version"] == 2
    again = Bundle.load(folder)
    assert again.chunk_map is not None
    np.testing.assert_allclose(again.represent(feats).coarse, expected, atol=1e-5)
    np.testing.assert_allclose(Bundle.load(plain_dir).represent(feats).coarse,
                               lite_chunk_vectors(feats, 4).reshape(-1), atol=1e-6)
    with pytest.raises(BundleError, match="ChunkMap"):
        Bundle("m", base.backbone, whitening=base.whitening, coarse_type="chunks", coarse_net=chunk_map,
               coarse_args={"chunks": 4, "map_dims": 16}, whitening_dims=32)
    # a dnsvr that reads format 1 only would compute the coarse vectors without the map: it must refuse
    monkeypatch.setattr(bundle_mod, "BUNDLE_FORMAT_VERSION", 1)
    with pytest.raises(BundleError, match="newer"):
        Bundle.load(folder)
    monkeypatch.undo()
    (folder / "coarse.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(folder)


def test_learned_bundle_with_a_chunk_map_attaches_with_its_coarse_vectors_and_calibration(
        collection: Path, tmp_path: Path) -> None:
    from dnsvr.bundle import load_bundle
    from dnsvr.index import VideoIndex
    from dnsvr.train.learned_whitening import build_learned_bundle

    with VideoIndex.open(collection / "idx", readonly=True) as old:
        base = old.bundle
        ids = old.ids()
        videos = {v: np.asarray(f, np.float32) for v, f in zip(ids, old.store.fine(ids))}
    rng = np.random.default_rng(5)
    copies = {copy_id(v, k): _unit(x + 0.15 * rng.standard_normal(x.shape)) for v, x in videos.items()
              for k in range(12)}
    bundle, learned = build_learned_bundle(base, videos, copies, threshold=0.0, seed=0)
    assert bundle.chunk_map is not None and bundle.extra["learned_whitening"]["chunk_pairs"] > 0
    assert bundle.extra["learned_whitening"]["chunks_mapped"] is True
    # the coarse calibration was fitted again for the mapped chunks
    assert (bundle.scoring.coarse_scale, bundle.scoring.coarse_offset) != (base.scoring.coarse_scale,
                                                                           base.scoring.coarse_offset)
    bundle.save(tmp_path / "bundle")
    res = CliRunner().invoke(app, ["index", "attach", str(collection / "idx"), str(tmp_path / "bundle"),
                                   str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    loaded = load_bundle(tmp_path / "bundle")
    p = learned.matrix.astype(np.float32)
    with VideoIndex.open(tmp_path / "new", readonly=True) as new:
        stored = new.store.coarse_vectors(ids)
        for v, row in zip(ids, stored):
            np.testing.assert_allclose(row, loaded.represent(_unit(videos[v] @ p)).coarse, atol=2e-3)
        hits = new.search([str(collection / "videos" / "v5.mp4")], top_k=1, include_self=True, budget=0)[0]
        assert hits.results[0].video_id == "v5"
    table = CliRunner().invoke(app, ["index", "info", str(tmp_path / "new")]).stdout
    assert "coarse chunks mapped" in table
