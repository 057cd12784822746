"""VideoIndex round trips on feature files: add/search/remove/compact, reopen, one add vs many, DnS equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DIMS, make_collection, plain_bundle, student_bundle, write_h5

from dnsvr.index.video_index import VideoIndex, VideoIndexError
from dnsvr.search import Budget


def _as_tuples(results):
    return [[(r.video_id, r.score, r.coarse_score, r.fine_score) for r in q.results] for q in results]


def _assert_same(a, b):
    assert [[x[0] for x in q] for q in a] == [[x[0] for x in q] for q in b]
    for qa, qb in zip(a, b):
        for x, y in zip(qa, qb):
            assert abs(x[1] - y[1]) < 1e-5 and abs(x[2] - y[2]) < 1e-5
            assert (x[3] is None) == (y[3] is None)


def test_add_search_remove_compact_roundtrip(tmp_path):
    videos, groups = make_collection()
    h5 = write_h5(tmp_path / "feats.h5", videos)
    index = VideoIndex.create(tmp_path / "one", plain_bundle())
    report = index.add([h5])
    assert sorted(report.added) == sorted(videos) and not report.skipped
    queries = list(groups)
    res = index.search(queries, top_k=5, budget="100%")
    for q, out in zip(queries, res):
        top = [r.video_id for r in out.results]
        assert q not in top  # the query itself is excluded
        assert set(groups[q]) <= set(top[:2]), (q, top)
        assert all(r.stage == "fine" and r.fine_score is not None for r in out.results)
        assert out.results[0].segments, "re-ranked results carry segments"
    # one add vs many, and reopen
    many = VideoIndex.create(tmp_path / "many", plain_bundle())
    items = list(videos.items())
    for k in range(0, len(items), 5):
        many.add([write_h5(tmp_path / f"part{k}.h5", dict(items[k:k + 5]))])
    res_many = many.search(queries, top_k=None, budget="30%")
    res_one = index.search(queries, top_k=None, budget="30%")
    _assert_same(_as_tuples(res_one), _as_tuples(res_many))
    index.close()
    reopened = VideoIndex.open(tmp_path / "one")
    _assert_same(_as_tuples(res_one), _as_tuples(reopened.search(queries, top_k=None, budget="30%")))
    # remove hides at once; compact keeps the rest identical
    gone = groups[queries[0]][0]
    assert reopened.remove([gone]) == 1
    after = reopened.search(queries, top_k=None, budget="100%")
    assert gone not in [r.video_id for q in after for r in q.results]
    before_compact = _as_tuples(after)
    reopened.compact()
    assert reopened.verify().ok
    _assert_same(before_compact, _as_tuples(reopened.search(queries, top_k=None, budget="100%")))
    assert len(reopened) == len(videos) - 1
    info = reopened.info()
    assert info["videos"] == len(videos) - 1 and info["bundle"]["fine"] == "chamfer"
    with pytest.raises(VideoIndexError, match="neither"):
        reopened.search(["no-such-id"])
    reopened.close()
    many.close()


def test_query_by_feature_file_equals_query_by_id(tmp_path):
    videos, groups = make_collection(seed=1)
    h5 = write_h5(tmp_path / "feats.h5", videos)
    with VideoIndex.create(tmp_path / "idx", plain_bundle()) as index:
        index.add([h5])
        q = list(groups)[0]
        by_id = index.search([q], top_k=None, budget="50%", include_self=True)[0]
        by_file = index.search([write_h5(tmp_path / "q.h5", {q: videos[q]})], top_k=None, budget="50%")[0]
        assert by_file.query == q
        # stored fine representations are float16: the id query reads the rounded copy
        assert [r.video_id for r in by_id.results][:5] == [r.video_id for r in by_file.results][:5]
        np.testing.assert_allclose([r.score for r in by_id.results], [r.score for r in by_file.results],
                                   atol=2e-3)
        assert by_id.results[0].video_id == q and by_id.results[0].score > 0.99


@pytest.mark.parametrize("fine_type", ["att", "bin"])
def test_dns_ranking_equals_networks(tmp_path, fine_type):
    """The index's ranking = coarse student, selector, fine student on the selected pairs, computed directly."""
    videos, groups = make_collection(seed=2)
    bundle = student_bundle(fine_type, dims=DIMS)
    with VideoIndex.create(tmp_path / "idx", bundle) as index:
        index.add([write_h5(tmp_path / "f.h5", videos)])
        query = list(groups)[1]
        budget = Budget(fraction=0.25)
        got = index.search([query], top_k=None, budget=budget)[0]

    fg, cg, sel = bundle.fine_net, bundle.coarse_net, bundle.selector_net
    ids = [v for v in videos if v != query]
    with torch.no_grad():
        def coarse(x):
            return cg.index_video(torch.from_numpy(x)[None]).reshape(-1)

        def fine(x):
            rep = fg.index_video(torch.from_numpy(x)).reshape(x.shape[0], 9, -1)
            # the index stores S^f_A as float16 and S^f_B as bits (±1 exactly)
            return rep.half().float() if fine_type == "att" else rep

        def selfsim(x):
            return float(sel.index_video(torch.from_numpy(x)[None]).reshape(-1)[0])

        qc, qf, qs = coarse(videos[query]), fine(videos[query]), selfsim(videos[query])
        coarse_s = np.array([float(qc @ coarse(videos[v])) for v in ids])
        mlp_in = torch.tensor([[qs, selfsim(videos[v]), c] for v, c in zip(ids, coarse_s)], dtype=torch.float32)
        selector_s = sel(mlp_in).reshape(-1).numpy()
        n_pairs = int(0.25 * len(ids))
        chosen = np.argsort(-selector_s, kind="stable")[:n_pairs]
        combined = coarse_s.copy()
        fine_s = {}
        for i in chosen:
            s = float(fg.calculate_video_similarity(qf, fine(videos[ids[i]])).reshape(-1)[0])
            fine_s[ids[i]] = s
            combined[i] = s / 2 + 0.5
    order = sorted(range(len(ids)), key=lambda i: (-combined[i], ids[i]))
    assert got.fine_pairs == n_pairs
    assert [r.video_id for r in got.results] == [ids[i] for i in order]
    for r, i in zip(got.results, order):
        assert abs(r.score - combined[i]) < 1e-5
        assert abs(r.coarse_score - coarse_s[i]) < 1e-5
        assert abs(r.selector_score - selector_s[i]) < 1e-5
        if ids[i] in fine_s:
            assert r.stage == "fine" and abs(r.fine_score - fine_s[ids[i]]) < 1e-4
        else:
            assert r.stage == "coarse" and r.fine_score is None


def test_attach_recomputes_from_stored_features(tmp_path):
    videos, groups = make_collection(seed=3)
    with VideoIndex.create(tmp_path / "lite", plain_bundle()) as lite:
        lite.add([write_h5(tmp_path / "f.h5", videos)])
        trained = student_bundle("bin", dims=DIMS)
        with lite.attach(trained, tmp_path / "trained") as new:
            assert sorted(new.ids()) == sorted(videos)
            assert new.bundle.fine_type == "bin"
            got = new.search([list(groups)[0]], top_k=3, budget="100%")[0]
        with VideoIndex.create(tmp_path / "direct", trained) as direct:
            # the same bundle on float16-rounded base features
            rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in videos.items()}
            direct.add([write_h5(tmp_path / "r.h5", rounded)])
            want = direct.search([list(groups)[0]], top_k=3, budget="100%")[0]
    assert [r.video_id for r in got.results] == [r.video_id for r in want.results]
    np.testing.assert_allclose([r.score for r in got.results], [r.score for r in want.results], atol=1e-5)


def test_readonly_and_errors(tmp_path):
    videos, _ = make_collection(seed=4, n_groups=2)
    h5 = write_h5(tmp_path / "f.h5", videos)
    with VideoIndex.create(tmp_path / "idx", plain_bundle()) as index:
        index.add([h5])
        with pytest.raises(Exception, match="(?i)duplicate|already"):
            index.add([h5])
        rep = index.add([h5], on_duplicate="skip")
        assert not rep.added and not rep.skipped and sorted(rep.already_indexed) == sorted(videos)
        bad = tmp_path / "bad.h5"
        bad.write_bytes(b"not hdf5")
        rep = index.add([bad])
        assert rep.skipped and "bad.h5" in rep.skipped[0][0]
        reader = VideoIndex.open(tmp_path / "idx", readonly=True)
        assert len(reader) == len(videos)
        assert reader.search(["g0"], top_k=2)[0].results
        with pytest.raises(VideoIndexError, match="read-only"):
            reader.add([h5])
        reader.close()
    with pytest.raises(VideoIndexError, match="not a dnsvr index"):
        VideoIndex.open(tmp_path)
    with pytest.raises(FileExistsError):
        VideoIndex.create(tmp_path / "idx", plain_bundle())


def test_coarse_top_n_candidates(tmp_path):
    """With ``ann_candidates`` only the coarse top-N reach the selector and fine stages."""
    videos, groups = make_collection(seed=6)
    with VideoIndex.create(tmp_path / "idx", plain_bundle(), coarse_index="HNSW32") as index:
        index.add([write_h5(tmp_path / "f.h5", videos)])
        q = list(groups)[0]
        full = index.search([q], top_k=None, budget="100%")[0]
        top = index.search([q], top_k=None, budget="100%", ann_candidates=6)[0]
    assert top.candidates <= 6 and len(top.results) <= 6
    coarse_order = sorted(full.results, key=lambda r: -r.coarse_score)
    expected = {r.video_id for r in coarse_order[:6]} - {q}
    assert {r.video_id for r in top.results} <= expected | {q}
    # the fine scores of the pairs both runs re-ranked are the same
    fine = {r.video_id: r.fine_score for r in full.results}
    for r in top.results:
        assert abs(r.fine_score - fine[r.video_id]) < 1e-6
