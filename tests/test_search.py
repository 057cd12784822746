"""The DnS query logic on arrays: budgets, pair selection, combination, segments."""

from __future__ import annotations

import numpy as np
import pytest

from dnsvr.search import Budget, align_segments, combine, dns_rank, fine_to_score, select_pairs


def test_budget_parse_and_pairs():
    assert Budget.parse("5%") == Budget(fraction=0.05)
    assert Budget.parse("0.01") == Budget(fraction=0.01)
    assert Budget.parse("1000") == Budget(pairs=1000)
    assert Budget.parse("5%,1000") == Budget(fraction=0.05, pairs=1000)
    assert Budget.parse(250) == Budget(pairs=250)
    assert Budget(fraction=0.05).pairs_for(100_000) == 5000
    assert Budget(fraction=0.01).pairs_for(100_000) == 1000
    assert Budget(fraction=0.05, pairs=1000).pairs_for(100_000) == 1000
    assert Budget(fraction=0.05, pairs=1000).pairs_for(10_000) == 500
    assert Budget().pairs_for(10) == 0
    assert str(Budget(fraction=0.05, pairs=7)) == "5%,7"
    for bad in ("abc", "5%%", "-3", "2.5"):
        with pytest.raises(ValueError):
            Budget.parse(bad)


def test_select_pairs_uses_selector_then_coarse():
    coarse = np.array([0.9, 0.1, 0.5, 0.5, 0.3], dtype=np.float32)
    assert select_pairs(coarse, None, 3).tolist() == [0, 2, 3]
    selector = np.array([0.1, 0.9, 0.2, 0.2, 0.8], dtype=np.float32)
    assert select_pairs(coarse, selector, 3).tolist() == [1, 4, 2]
    assert select_pairs(coarse, selector, 0).tolist() == []
    assert select_pairs(coarse, selector, 99).tolist() == [1, 4, 2, 3, 0]


def test_combine_replaces_coarse_with_mapped_fine():
    ids = ["a", "b", "c", "d"]
    coarse = np.array([0.8, 0.7, 0.6, 0.1], dtype=np.float32)
    results = combine(ids, coarse, None, np.array([1, 3]), np.array([0.9, -0.6]), top_k=None)
    assert [r.video_id for r in results] == ["b", "a", "c", "d"]
    b = results[0]
    assert b.stage == "fine" and b.fine_score == pytest.approx(0.9) and b.score == pytest.approx(0.95)
    assert results[1].stage == "coarse" and results[1].fine_score is None
    assert results[3].score == pytest.approx(fine_to_score(-0.6))
    assert len(combine(ids, coarse, None, np.array([1]), np.array([0.2]), top_k=2)) == 2


def test_combine_top_k_is_the_head_of_the_full_ranking_with_ties():
    """The partitioned top-k equals the full sort's head, ties broken by id at the k-th score too."""
    rng = np.random.default_rng(5)
    n = 500
    ids = [f"v{i:04d}" for i in rng.permutation(n)]
    coarse = np.round(rng.uniform(-1, 1, n), 1).astype(np.float32)  # many ties
    selected = np.arange(0, n, 7)
    fine = np.round(rng.uniform(-1, 1, len(selected)), 1).astype(np.float32)
    full = [(r.video_id, r.score) for r in combine(ids, coarse, None, selected, fine, top_k=None)]
    assert full == sorted(full, key=lambda x: (-x[1], x[0]))
    for k in (0, 1, 3, 10, 37, n - 1, n, n + 3):
        head = [(r.video_id, r.score) for r in combine(ids, coarse, None, selected, fine, top_k=k)]
        assert head == full[:k], k


def test_dns_rank_equals_direct_computation():
    """The ranking is "coarse, then fine on the selected pairs", computed independently here."""
    rng = np.random.default_rng(0)
    n = 200
    ids = [f"v{i:03d}" for i in range(n)]
    coarse = rng.uniform(-1, 1, n).astype(np.float32)
    fine_all = rng.uniform(-1, 1, n).astype(np.float32)
    selector = rng.uniform(0, 1, n).astype(np.float32)
    calls = []

    def fine_fn(sel_ids):
        calls.append(list(sel_ids))
        return np.array([fine_all[ids.index(i)] for i in sel_ids])

    results, pairs = dns_rank(ids, coarse, budget=Budget(fraction=0.1), database_size=n, fine_fn=fine_fn,
                              selector_fn=lambda _ids, _c: selector, top_k=None)
    assert pairs == 20 and len(calls[0]) == 20
    chosen = set(np.argsort(-selector)[:20].tolist())
    assert {ids.index(i) for i in calls[0]} == chosen
    expected = np.where(np.isin(np.arange(n), list(chosen)), fine_all / 2 + 0.5, coarse)
    order = np.argsort(-expected, kind="stable")
    assert [r.video_id for r in results] == [ids[i] for i in order]
    np.testing.assert_allclose([r.score for r in results], expected[order], atol=1e-6)


def test_align_segments_diagonal_and_speedup():
    rng = np.random.default_rng(1)
    s = rng.uniform(0.0, 0.3, (40, 60))
    # query frames 5..24 match target frames 30..49 (same speed)
    for i in range(5, 25):
        s[i, 25 + i] = 0.95
    segs = align_segments(s, np.arange(40) * 1.0, np.arange(60) * 1.0)
    assert segs, "expected a segment"
    best = segs[0]
    assert (best.query_start, best.query_end) == (5.0, 25.0)
    assert (best.target_start, best.target_end) == (30.0, 50.0)
    assert best.score == pytest.approx(0.95)
    # a 2x speed-up (query frame i matches target 2i) stays one segment
    s2 = rng.uniform(0.0, 0.3, (20, 45))
    for i in range(20):
        s2[i, 2 * i] = 0.9
    segs2 = align_segments(s2)
    assert len(segs2) >= 1 and segs2[0].query_start == 0.0 and segs2[0].query_end == 20.0
    assert segs2[0].target_start == 0.0 and segs2[0].target_end == 39.0
    # a flat matrix has nothing that stands out
    assert align_segments(np.full((10, 10), 0.4)) == []


def test_align_segments_ignores_unrelated_background():
    rng = np.random.default_rng(2)
    noise = 0.05 + 0.01 * rng.standard_normal((30, 25))
    assert align_segments(noise) == []
    # a weak but clear diagonal (a heavily re-encoded copy) is still found, whole
    copy = noise.copy()
    for i in range(25):
        copy[i, i] = 0.2 + 0.05 * rng.standard_normal()
    segs = align_segments(copy)
    assert segs and segs[0].query_start == 0.0 and segs[0].query_end == 25.0
