"""The bundle's match scoring: Chamfer direction, coverages, match modes, the inset match, one score scale."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dnsvr.backbones.extractor import RANDOM, FeatureExtractor, InsetExtractor
from dnsvr.backbones.regions import global_mac, l3_imac
from dnsvr.bundle import LITE_SCORING, Bundle, BundleError, MatchScoring, lite_bundle, shared_shot
from dnsvr.search import combine


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _video(rng: np.random.Generator, frames: int, dims: int = 32) -> np.ndarray:
    return _unit(rng.standard_normal((frames, 9, dims)))


def _chamfer_bundle(scoring: MatchScoring) -> Bundle:
    return Bundle("t", "efficientnet_lite0", fine_type="chamfer", coarse_type="mean", scoring=scoring)


def test_min_direction_scores_a_partial_below_a_whole_copy_and_coverages_say_why() -> None:
    rng = np.random.default_rng(0)
    query = _video(rng, 12)
    noisy_copy = _unit(query + 0.08 * rng.standard_normal(query.shape))      # every frame, weaker
    partial = np.concatenate([query[:4], _video(rng, 12)])                     # 4 exact frames among others
    cands = [noisy_copy.astype(np.float16), partial.astype(np.float16)]
    query_dir = _chamfer_bundle(MatchScoring()).fine_match(query, cands)
    min_dir = _chamfer_bundle(MatchScoring(direction="min", coverage_threshold=0.5)).fine_match(query, cands)
    # the query direction sees the partial's exact frames; the min direction also asks how much of the
    # candidate is the query
    assert min_dir.scores[1] < query_dir.scores[1]
    assert min_dir.scores[0] > min_dir.scores[1]
    np.testing.assert_allclose(min_dir.coverage[0], [1.0, 1.0])
    np.testing.assert_allclose(min_dir.coverage[1], [4 / 12, 4 / 16], atol=1e-6)
    # the identity scoring gives the network's (here: Chamfer's) score unchanged
    plain, _ = _chamfer_bundle(MatchScoring()).fine_similarities(query, cands)
    np.testing.assert_allclose(query_dir.scores, plain, atol=1e-6)


def test_copy_mode_penalises_uncovered_frames_more_than_related_mode() -> None:
    rng = np.random.default_rng(1)
    query = _video(rng, 10)
    partial = np.concatenate([query[:5], _video(rng, 5)]).astype(np.float16)
    scoring = MatchScoring(direction="min", coverage_threshold=0.5, related_penalty=0.05, copy_penalty=0.3)
    b = _chamfer_bundle(scoring)
    related = b.fine_match(query, [partial], match="related").scores[0]
    copy = b.fine_match(query, [partial], match="copy").scores[0]
    base = _chamfer_bundle(MatchScoring(direction="min")).fine_match(query, [partial]).scores[0]
    np.testing.assert_allclose(related, base - 0.05 * 0.5, atol=1e-6)
    np.testing.assert_allclose(copy, base - 0.3 * 0.5, atol=1e-6)
    with pytest.raises(BundleError, match="match mode"):
        b.fine_match(query, [partial], match="everything")


def test_shared_shot_is_the_best_diagonal_window_of_the_frame_matrix() -> None:
    m = np.full((5, 6), 0.1)
    m[1, 2], m[2, 3], m[3, 4] = 0.9, 0.8, 0.7          # a shot along a diagonal
    m[0, 0], m[4, 0] = 1.0, 1.0                        # strong frames, not consecutive on both sides
    assert shared_shot(m, 3) == pytest.approx(0.8)
    assert shared_shot(m, 1) == pytest.approx(1.0)
    assert shared_shot(m, 2) == pytest.approx(0.85)
    assert shared_shot(m[:2, :2], 3) == pytest.approx(np.mean([1.0, 0.1]))   # shorter videos: their length
    brute = max(np.mean([m[i + s, j + s] for s in range(3)]) for i in range(3) for j in range(4))
    assert shared_shot(m, 3) == pytest.approx(brute)


def test_related_mode_lifts_a_video_that_shares_one_shot_and_leaves_copy_mode_alone() -> None:
    rng = np.random.default_rng(5)
    query = _video(rng, 12)
    partial = np.concatenate([_video(rng, 6), query[4:8], _video(rng, 6)]).astype(np.float16)  # 4 shared frames
    unrelated = _video(rng, 16).astype(np.float16)
    shot = MatchScoring(direction="min", coverage_threshold=0.5, related_penalty=0.05, shared_shot_frames=3,
                        shared_shot_score=0.7, shared_shot_slope=0.4)
    plain = MatchScoring(direction="min", coverage_threshold=0.5, related_penalty=0.05)
    lifted = _chamfer_bundle(shot).fine_match(query, [partial, unrelated], match="related").scores
    before = _chamfer_bundle(plain).fine_match(query, [partial, unrelated], match="related").scores
    # the shared frames are exact: the partial sits at the term's level; the unrelated video gets the
    # larger of its score and the term at its own best diagonal, far below
    assert lifted[0] == pytest.approx(0.7, abs=1e-3) and before[0] < 0.6
    _, mats = _chamfer_bundle(plain).fine_similarities(query, [unrelated], return_matrices=True)
    assert lifted[1] == pytest.approx(max(before[1], 0.7 - 0.4 * (1 - shared_shot(mats[0], 3))), abs=1e-6)
    assert lifted[1] < 0.5
    for mode in ("copy",):
        np.testing.assert_allclose(_chamfer_bundle(shot).fine_match(query, [partial], match=mode).scores,
                                   _chamfer_bundle(plain).fine_match(query, [partial], match=mode).scores)
    with pytest.raises(BundleError, match="shared_shot_frames"):
        MatchScoring(shared_shot_frames=0)
    with pytest.raises(BundleError, match="shared-shot"):
        Bundle("t", "efficientnet_lite0", fine_type="att", fine_net=torch.nn.Identity(),
               scoring=MatchScoring(shared_shot_frames=3))


def test_a_shared_black_leader_is_not_a_shared_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    import dnsvr.bundle as bundle_mod
    from dnsvr import synthetic

    extractor = FeatureExtractor("efficientnet_lite0")

    def clip(i: int, frames: int) -> np.ndarray:
        return np.asarray(synthetic.render_clip(i, seconds=frames, fps=1, size=(224, 224)))[:frames]

    black = np.zeros((3, 224, 224, 3), np.uint8)
    query_raw = extractor.extract(np.concatenate([black, clip(1, 8)])).numpy()
    other_raw = extractor.extract(np.concatenate([black, clip(2, 8)])).numpy()
    # a high shared-shot level, so that the term shows above the Chamfer score
    scoring = dataclasses.replace(LITE_SCORING, shared_shot_score=0.95)
    b = lite_bundle()
    b.scoring = scoring
    b.fit_whitening([extractor.extract(clip(i, 8)).numpy() for i in range(3, 8)] + [query_raw, other_raw], dims=32)
    query, other = b.whiten(query_raw), b.whiten(other_raw).astype(np.float16)
    np.testing.assert_array_equal(b.uniform_frames(query), [True] * 3 + [False] * 8)
    cards = np.zeros((2, 224, 224, 3), np.uint8)
    cards[0], cards[1] = (200, 30, 30), (20, 20, 160)   # colour cards not among the reference colours
    assert b.uniform_frames(b.whiten(extractor.extract(cards).numpy())).all()
    guarded = b.fine_match(query, [other]).scores[0]
    _, mats = b.fine_similarities(query, [other], return_matrices=True)
    content_only = 0.95 - scoring.shared_shot_slope * (1 - shared_shot(mats[0][3:], 3))
    monkeypatch.setattr(bundle_mod, "uniform_frame_features", lambda backbone: None)
    fresh = lite_bundle()           # a bundle that has not seen the reference frames
    fresh.scoring, fresh.whitening = scoring, b.whitening
    assert fresh.uniform_frames(query) is None
    unguarded = fresh.fine_match(query, [other]).scores[0]
    # unguarded, the three black frames are a perfect shared shot; guarded, only the content counts
    assert unguarded == pytest.approx(0.95, abs=1e-3)
    assert guarded < 0.9 and guarded >= content_only - 1e-6


def test_inset_match_lifts_a_candidate_whose_regions_show_the_query_small() -> None:
    rng = np.random.default_rng(2)
    query = _video(rng, 8)
    inset = _unit(rng.standard_normal((8, 32)))
    host = _video(rng, 8)
    pip = host.copy()
    pip[:, 4] = inset            # one region of every candidate frame shows the shrunken query
    scoring = MatchScoring(direction="min", inset_scale=0.4)
    b = _chamfer_bundle(scoring)
    without = b.fine_match(query, [pip.astype(np.float16), host.astype(np.float16)]).scores
    with_inset = b.fine_match(query, [pip.astype(np.float16), host.astype(np.float16)], inset=inset).scores
    assert with_inset[0] > 0.99 > without[0]
    assert with_inset[1] < 0.5           # an unrelated host gains nothing
    # a scoring without an inset scale ignores the vectors
    np.testing.assert_allclose(_chamfer_bundle(MatchScoring(direction="min")).fine_match(
        query, [pip.astype(np.float16)], inset=inset).scores, without[:1], atol=1e-6)


def test_scoring_round_trips_through_the_bundle_folder_and_old_bundles_keep_the_identity(tmp_path) -> None:
    b = lite_bundle()
    assert b.scoring == LITE_SCORING
    b.fit_whitening([np.random.default_rng(0).standard_normal((40, 9, 96)).astype(np.float32)], dims=32)
    b.save(tmp_path / "b")
    assert Bundle.load(tmp_path / "b").scoring == LITE_SCORING
    assert Bundle.load(tmp_path / "b").extra["whitening_fitted_on"] == {"videos": 1, "region_vectors": 360, "dims": 32}
    cfg = json.loads((tmp_path / "b" / "bundle.json").read_text())
    del cfg["scoring"]                   # a bundle written before scorings existed
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(cfg))
    assert Bundle.load(tmp_path / "b").scoring == MatchScoring()
    cfg["scoring"] = {"direction": "sideways"}
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="direction"):
        Bundle.load(tmp_path / "b")
    cfg["scoring"] = {"unknown_field": 1}
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="scoring"):
        Bundle.load(tmp_path / "b")
    with pytest.raises(BundleError, match="chamfer"):
        Bundle("t", "efficientnet_lite0", fine_type="att", fine_net=torch.nn.Identity(),
               scoring=MatchScoring(inset_scale=0.4))


def test_coarse_rows_share_the_fine_scale_and_re_ranked_rows_carry_coverages() -> None:
    ids = ["a", "b", "c"]
    coarse = np.array([0.9, 0.5, 0.2], np.float32)
    scoring = MatchScoring(coarse_scale=0.5, coarse_offset=0.1)
    b = _chamfer_bundle(scoring)
    out = combine(ids, coarse, None, np.array([1]), np.array([0.8]), top_k=None,
                  coverage=np.array([[1.0, 0.5]], np.float32), coarse_as_fine=b.coarse_as_fine)
    by_id = {r.video_id: r for r in out}
    assert by_id["b"].score == pytest.approx(0.8 / 2 + 0.5)
    assert (by_id["b"].query_coverage, by_id["b"].target_coverage) == (1.0, 0.5)
    assert by_id["a"].score == pytest.approx((0.5 * 0.9 + 0.1) / 2 + 0.5, abs=1e-6)
    assert by_id["a"].query_coverage is None and by_id["a"].stage == "coarse"
    assert [r.video_id for r in out] == ["b", "a", "c"]


def test_inset_vectors_describe_the_shrunken_frame_whole() -> None:
    ex = FeatureExtractor("efficientnet_lite0", weights=RANDOM)
    frames = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    vec = ex.inset_vectors(frames, 0.4)
    assert vec.shape == (3, ex.region_dims)
    small = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(90, 90),
                                            mode="bicubic", antialias=True, align_corners=False)
    small = small.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    with torch.inference_mode():
        x = ex.normalize(small).contiguous(memory_format=torch.channels_last)
        expected = global_mac(ex.net.forward_stages(x))
    torch.testing.assert_close(vec, expected, atol=1e-5, rtol=1e-5)
    both = InsetExtractor(ex, 0.4)(frames)
    assert both.shape == (3, 10, ex.region_dims)
    torch.testing.assert_close(both[:, :9], ex.extract(frames))
    torch.testing.assert_close(both[:, 9], vec)
    # global MAC, known by hand: each stage's channel maxima, L2-normalised per stage, concatenated, normalised
    first, second = torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 4, 4)
    first[0, 0, 7, 7], first[0, 1, 0, 3] = 3.0, 4.0      # stage maxima (3, 4) → (0.6, 0.8)
    second[0, 2, 1, 1] = 5.0                             # stage maxima (0, 0, 5) → (0, 0, 1)
    expected_mac = torch.tensor([[0.6, 0.8, 0.0, 0.0, 1.0]]) / 2 ** 0.5
    torch.testing.assert_close(global_mac([first, second]), expected_mac)
    assert l3_imac([first, second]).shape == (1, 9, 5)   # the same layout, per region


def test_a_query_video_brings_inset_vectors_and_they_only_lift_scores(tmp_path) -> None:
    """End to end: a query *file* is extracted with its inset vectors (the tenth row), its stored features
    are not; in related mode the inset match can only raise a pair's score, and lifts the inset copy."""
    from dnsvr import synthetic
    from dnsvr.extract import extract_videos
    from dnsvr.index import VideoIndex

    videos = tmp_path / "videos"
    videos.mkdir()
    size = (320, 180)
    original = synthetic.render_clip(1, seconds=6.0, fps=8.0, size=size)
    host = synthetic.render_clip(2, seconds=6.0, fps=8.0, size=size)
    pip = host.copy()
    inner = synthetic.resize_frames(original, (144, 80))
    pip[:, 60:140, 90:234] = inner                       # the original at 45 % in the middle of another clip
    synthetic.write_video(videos / "pip.mp4", pip, fps=8.0)
    for seed in (3, 4, 5, 6, 7):
        synthetic.write_video(videos / f"other{seed}.mp4", synthetic.render_clip(seed, 6.0, 8.0, size), fps=8.0)
    query = synthetic.write_video(tmp_path / "query.mp4", original, fps=8.0)
    index = VideoIndex.create(tmp_path / "idx")
    index.add(videos, progress=False)
    assert index.bundle.scoring.inset_scale is not None
    h5 = tmp_path / "q.h5"
    extract_videos([query], h5, FeatureExtractor("efficientnet_lite0"), progress=False)
    by_file = {r.video_id: r for r in index.search(query, top_k=None)[0].results}
    by_features = {r.video_id: r for r in index.search(h5, top_k=None)[0].results}
    index.close()
    assert set(by_file) == set(by_features)
    for vid in by_file:
        assert by_file[vid].score >= by_features[vid].score - 1e-5
    assert by_file["pip"].score > by_features["pip"].score + 0.01
