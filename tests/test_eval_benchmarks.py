"""Evaluation protocols: reference parity on ../shared/golden/eval, and hand-made cases with known answers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from dnsvr.eval import (
    BENCHMARKS,
    CCWebVideo,
    CustomBenchmark,
    EVVE,
    FIVR,
    SVD,
    SimilarityFileError,
    SimilarityTable,
    average_precision,
    evaluate,
    get_benchmark,
    load_similarities,
    rank_order,
    save_similarities,
    step_average_precision,
    trapezoid_average_precision,
)
from dnsvr.eval import similarities as sim_module

GOLDEN = ["FIVR-5K", "CC_WEB_VIDEO", "SVD", "EVVE"]


def _golden(shared_dir: Path, name: str) -> dict:
    with gzip.open(shared_dir / "golden" / "eval" / f"{name}.json.gz", "rt") as fh:
        return json.load(fh)


# -- reference parity -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GOLDEN)
def test_golden_metrics_match_reference(shared_dir: Path, name: str) -> None:
    golden = _golden(shared_dir, name)
    metrics = evaluate(golden["benchmark"], golden["similarities"])
    assert golden["expected"], "golden file without expected metrics"
    for metric, expected in golden["expected"].items():
        assert metric in metrics, f"{name}: metric {metric} missing from {sorted(metrics)}"
        assert metrics[metric] == pytest.approx(expected, abs=1e-9), f"{name} {metric}"


def test_every_golden_file_matches(shared_dir: Path) -> None:
    """Any golden file present (more may be added) is a shipped benchmark, and matches."""
    files = sorted((shared_dir / "golden" / "eval").glob("*.json.gz"))
    assert {p.name.removesuffix(".json.gz") for p in files} >= set(GOLDEN)
    for path in files:
        name = path.name.removesuffix(".json.gz")
        assert name in BENCHMARKS
        if name in GOLDEN:
            continue  # checked above, one test each
        golden = _golden(shared_dir, name)
        metrics = evaluate(golden["benchmark"], golden["similarities"])
        for metric, expected in golden["expected"].items():
            assert metrics[metric] == pytest.approx(expected, abs=1e-9), f"{name} {metric}"


def test_golden_fivr_through_file_and_table(shared_dir: Path, tmp_path: Path) -> None:
    golden = _golden(shared_dir, "FIVR-5K")
    path = save_similarities(golden["similarities"], tmp_path / "sims.json.gz")
    metrics = evaluate("FIVR-5K", path)
    for metric, expected in golden["expected"].items():
        assert metrics[metric] == pytest.approx(expected, abs=1e-9)


def test_golden_fivr_tie_order_matters(shared_dir: Path) -> None:
    """Reversing the key order of each query changes only how ties fall; the reference keeps file order."""
    golden = _golden(shared_dir, "FIVR-5K")
    sims = golden["similarities"]
    reversed_sims = {q: dict(reversed(list(res.items()))) for q, res in sims.items()}
    forward = evaluate("FIVR-5K", sims)
    backward = evaluate("FIVR-5K", reversed_sims)
    assert forward["DSVR"] == pytest.approx(golden["expected"]["DSVR"], abs=1e-9)
    assert any(abs(forward[m] - backward[m]) > 1e-12 for m in ("DSVR", "CSVR", "ISVR"))


# -- metrics --------------------------------------------------------------------------------------------------------

def test_average_precision_known_values() -> None:
    assert average_precision(np.array([True, True, False]), 2) == 1.0
    assert average_precision(np.array([False, True]), 1) == 0.5
    assert average_precision(np.array([True, False, True]), 2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([True, False]), 2) == 0.5  # one positive never retrieved
    assert average_precision(np.array([False, False]), 3) == 0.0
    with pytest.raises(ValueError):
        average_precision(np.array([True]), 0)


def test_trapezoid_average_precision_known_values() -> None:
    assert trapezoid_average_precision(np.array([0, 1]), 2) == 1.0
    # One positive at rank 1: the trapezoid from precision 0 (before) to 1/2 (after), width 1.
    assert trapezoid_average_precision(np.array([1]), 1) == 0.25
    assert trapezoid_average_precision(np.array([]), 3) == 0.0
    assert trapezoid_average_precision(np.array([0]), 0) == 0.0


def test_step_average_precision_known_values() -> None:
    assert step_average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert step_average_precision(np.array([0, 1]), np.array([0.9, 0.1])) == 0.5
    # Tied scores form one threshold, whatever their order.
    assert step_average_precision(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert step_average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert step_average_precision(np.array([1, 0, 0]), np.array([-np.inf, 0.2, -np.inf])) == pytest.approx(1 / 3)
    assert step_average_precision(np.array([0, 0]), np.array([0.5, 0.1])) == 0.0


def test_rank_order_is_stable_descending() -> None:
    assert rank_order(np.array([0.1, 0.5, 0.5, 0.9])).tolist() == [3, 1, 2, 0]
    with pytest.raises(ValueError):
        rank_order(np.zeros((2, 2)))


# -- hand-made protocol cases ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fivr5k() -> FIVR:
    return FIVR("5k")


def _fivr_case(bench: FIVR) -> tuple[str, list[str], list[str]]:
    """A 5K query whose DS-task positives are in the database, its ND+DS ids, and some negatives."""
    db = set(bench.database)
    for query in bench.queries:
        ann = bench.annotation[query]
        pos = sorted(set(ann.get("ND", []) + ann.get("DS", [])) & db)
        every = set().union(*(v for v in ann.values()))
        if len(pos) >= 2:
            negatives = [v for v in bench.database if v not in every][:20]
            return query, pos, negatives
    raise AssertionError("no FIVR-5K query with two DSVR positives")


def test_fivr_perfect_ranking_and_query_skipped(fivr5k: FIVR) -> None:
    query, pos, neg = _fivr_case(fivr5k)
    res = {query: 10.0}  # the query itself, ranked first: skipped
    res.update({v: 1.0 - i * 1e-3 for i, v in enumerate(pos)})
    res.update({v: -1.0 - i * 1e-3 for i, v in enumerate(neg)})
    metrics = fivr5k.evaluate({query: res})
    assert metrics["DSVR"] == 1.0


def test_fivr_positive_at_rank_two(fivr5k: FIVR) -> None:
    query, pos, neg = _fivr_case(fivr5k)
    available = [pos[0]] + neg  # only one positive available: the others do not count
    res = {neg[0]: 0.9, pos[0]: 0.8, **{v: 0.1 for v in neg[1:]}}
    result = fivr5k.evaluate_detailed({query: res}, available=available)
    assert result.per_query["DSVR"][query] == 0.5
    # Every other positive becomes available: still retrieved once, at rank 2, out of len(pos).
    result = fivr5k.evaluate_detailed({query: res})
    assert result.per_query["DSVR"][query] == pytest.approx(0.5 / 1)  # unavailable ones are not in the file
    result = fivr5k.evaluate_detailed({query: res}, available=set(res) | set(pos))
    assert result.per_query["DSVR"][query] == pytest.approx(0.5 / len(pos))


def test_fivr_ties_keep_file_order(fivr5k: FIVR) -> None:
    query, pos, neg = _fivr_case(fivr5k)
    first = {pos[0]: 0.5, neg[0]: 0.5}
    second = {neg[0]: 0.5, pos[0]: 0.5}
    avail = [pos[0], neg[0]]
    assert fivr5k.evaluate({query: first}, available=avail)["DSVR"] == 1.0
    assert fivr5k.evaluate({query: second}, available=avail)["DSVR"] == 0.5


def test_fivr_unavailable_and_foreign_videos_are_skipped(fivr5k: FIVR) -> None:
    query, pos, neg = _fivr_case(fivr5k)
    res = {"not-a-fivr-video": 5.0, neg[0]: 4.0, pos[0]: 3.0, pos[1]: 2.0}
    metrics = fivr5k.evaluate({query: res}, available=[pos[0], pos[1], "not-a-fivr-video"])
    assert metrics["DSVR"] == 1.0  # neg[0] unavailable, the foreign id outside the database


def test_fivr_annotation_override_enables_davr(fivr5k: FIVR) -> None:
    query, pos, neg = _fivr_case(fivr5k)
    ann = {query: {"ND": pos[:1], "DA": [neg[1]]}}
    bench = FIVR("5k", annotation=ann)
    res = {neg[0]: 0.9, neg[1]: 0.8, pos[0]: 0.7}
    metrics = bench.evaluate({query: res})
    assert metrics["DSVR"] == pytest.approx(1 / 3)
    assert metrics["DAVR"] == 0.5
    # The shipped annotation's DA lists hold label names, not video ids: no DAVR from it.
    assert "DAVR" not in fivr5k.evaluate({query: res})


def test_fivr_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="5k"):
        FIVR("10k")


def test_cc_web_perfect_ranking() -> None:
    bench = CCWebVideo()
    number_to_id = {n: v for v, n in bench.index.items()}
    sims, expected = {}, {"mAP": [], "mAP_c": []}
    for qset, labels in enumerate(bench.ground_truth):
        query = bench.queries[qset]
        # Some labelled videos are not in the dataset index: never retrievable, still counted as positives.
        ordered = sorted((n for n in labels if n in number_to_id), key=lambda n: labels[n] not in "ESLMV")
        sims[query] = {number_to_id[n]: float(len(ordered) - i) for i, n in enumerate(ordered)}
        for metric, clean in (("mAP", False), ("mAP_c", True)):
            pos = [n for n, lab in labels.items() if lab in "ESLMV" and not (clean and n in bench.excluded[qset])]
            expected[metric].append(sum(n in number_to_id for n in pos) / len(pos))
    metrics = bench.evaluate(sims)
    assert metrics["mAP"] == pytest.approx(np.mean(expected["mAP"]), abs=1e-12)
    assert metrics["mAP_star"] == metrics["mAP"]  # only labelled videos in the results
    assert metrics["mAP_c"] == pytest.approx(np.mean(expected["mAP_c"]), abs=1e-12)
    assert metrics["mAP_c_star"] == metrics["mAP_c"]


def test_cc_web_query_itself_counts_and_unlabelled_matter_only_for_star() -> None:
    bench = CCWebVideo()
    number_to_id = {n: v for v, n in bench.index.items()}
    labels = bench.ground_truth[0]
    query = bench.queries[0]
    positives = [n for n, lab in labels.items() if lab in "ESLMV"]
    unlabelled = next(v for v, n in bench.index.items() if n not in labels)
    res = {unlabelled: 2.0, **{number_to_id[n]: 1.0 for n in positives}}
    result = bench.evaluate_detailed({query: res})
    assert number_to_id[1] == query and labels[1] == "E"  # the query is its own positive
    assert result.metrics["mAP"] == 1.0
    n = len(positives)
    assert result.metrics["mAP_star"] == pytest.approx(sum((i + 1) / (i + 2) for i in range(n)) / n)


def test_evve_perfect_and_shifted() -> None:
    bench = EVVE()
    query = bench.queries[0]
    event = bench.query_to_event[query]
    pos = bench.events[event]["positives"]
    other = [v for v in bench.database if v not in set(pos)][:5]
    perfect = {**{v: 1.0 for v in pos}, **{v: 0.0 for v in other}}
    result = bench.evaluate_detailed({query: perfect})
    assert result.per_query["mAP"][query] == pytest.approx(1.0, abs=1e-12)
    # An unavailable video ranked first does not shift the ranks.
    shifted = {"unavailable": 9.0, **perfect}
    result = bench.evaluate_detailed({query: shifted}, available=set(perfect) | {query})
    assert result.per_query["mAP"][query] == pytest.approx(1.0, abs=1e-12)
    # An available negative ranked first does.
    result = bench.evaluate_detailed({query: {other[0]: 9.0, pos[0]: 1.0}}, available={query, other[0], pos[0]})
    assert result.per_query["mAP"][query] == 0.25


def test_svd_perfect_and_distractors() -> None:
    bench = SVD()
    query, targets = next(iter(bench.ground_truth.items()))
    res = {t: float(lab) for t, lab in targets.items()}
    assert bench.evaluate({query: res})["mAP"] == 1.0
    # An unlabelled distractor above every positive; the tied positives form one threshold.
    n_pos = sum(targets.values())
    res["some-unlabelled-video"] = 5.0
    assert bench.evaluate({query: res})["mAP"] == pytest.approx(n_pos / (n_pos + 1))
    # Distinct scores: precision 1/2, 2/3, ... at each positive.
    pos_rank = {t: i for i, t in enumerate(t for t, lab in targets.items() if lab == 1)}
    res.update({t: 1.0 - 1e-3 * i for t, i in pos_rank.items()})
    expected = np.mean([(i + 1) / (i + 2) for i in range(n_pos)])
    assert bench.evaluate({query: res})["mAP"] == pytest.approx(expected)
    assert SVD(include_unlabeled=False).evaluate({query: res})["mAP"] == 1.0


def test_custom_benchmark_known_values(tmp_path: Path) -> None:
    gt = {"q1": {"a": "dup", "b": "other", "c": "dup"}, "q2": {"d": 1, "e": 0}, "q3": {"z": 1}}
    sims = {"q1": {"q1": 9.0, "a": 0.9, "c": 0.8, "b": 0.1},
            "q2": {"e": 0.9, "d": 0.5}}
    bench = CustomBenchmark(gt, positive_labels=["dup", "1"])
    result = bench.evaluate_detailed(sims)
    assert result.per_query["mAP"] == {"q1": 1.0, "q2": 0.5}
    assert result.metrics["mAP"] == 0.75
    assert result.missing_queries == ["q3"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert evaluate("custom", sims, ground_truth=path, positive_labels=["dup", "1"]) == {"mAP": 0.75}
    # Default positive label: 1 (True counts as 1).
    assert CustomBenchmark({"q": {"a": True, "b": False}}).evaluate({"q": {"b": 1.0, "a": 0.0}}) == {"mAP": 0.5}


def test_get_benchmark_names() -> None:
    assert get_benchmark("fivr-5k").name == "FIVR-5K"
    assert get_benchmark("cc_web_video").name == "CC_WEB_VIDEO"
    with pytest.raises(ValueError, match="FIVR-200K"):
        get_benchmark("nope")
    with pytest.raises(ValueError, match="ground_truth"):
        get_benchmark("custom")


def test_missing_queries_raise_when_none_found() -> None:
    with pytest.raises(ValueError, match="none of the"):
        evaluate("EVVE", {"unknown": {"a": 1.0}})


# -- similarity files -----------------------------------------------------------------------------------------------

def test_table_shares_positions_and_validates() -> None:
    sims = {"q1": {"a": 1.0, "b": 2.0}, "q2": {"a": 0.5, "b": 0.1}, "q3": {"b": 0.0}}
    table = SimilarityTable(sims)
    assert table.ids == ["q1", "a", "b", "q2", "q3"]
    assert table["q1"].positions is table["q2"].positions
    assert table["q3"].positions.tolist() == [2]
    with pytest.raises(SimilarityFileError, match="'b'.*'q'"):
        SimilarityTable({"q": {"a": 1.0, "b": None}})


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize("use_orjson", [True, False])
def test_load_similarities_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str,
                                     use_orjson: bool) -> None:
    if not use_orjson:
        monkeypatch.setattr(sim_module, "_orjson", None)
    elif sim_module._orjson is None:
        pytest.skip("orjson not installed")
    sims = {"q": {"b": 0.25, "a": -1.5, "c": 3}}
    path = save_similarities(sims, tmp_path / f"s{suffix}")
    loaded = load_similarities(path)
    assert loaded == sims and list(loaded["q"]) == ["b", "a", "c"]


def test_load_similarities_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_similarities(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SimilarityFileError, match="JSON object"):
        load_similarities(bad)
    bad.write_text("{not json")
    with pytest.raises(SimilarityFileError, match="not valid JSON"):
        load_similarities(bad)


@pytest.mark.parametrize("seed", range(6))
def test_positive_ranks_equals_stable_sort(seed: int) -> None:
    from dnsvr.eval.metrics import positive_ranks

    rng = np.random.default_rng(seed)
    n = 2000
    # Few distinct values on even seeds: many ties, decided by input order.
    scores = rng.integers(0, 15, n).astype(float) if seed % 2 == 0 else rng.normal(size=n).round(2)
    positive = rng.random(n) < 0.1
    expected_order = np.argsort(-scores, kind="stable")
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[expected_order] = np.arange(n)
    assert positive_ranks(scores, positive).tolist() == rank_of[positive].tolist()
    assert positive_ranks(scores, np.zeros(n, dtype=bool)).size == 0


def test_npz_roundtrip_matches_golden(shared_dir: Path, tmp_path: Path) -> None:
    golden = _golden(shared_dir, "CC_WEB_VIDEO")
    path = save_similarities(golden["similarities"], tmp_path / "sims.npz")
    table = SimilarityTable.from_file(path)
    assert table.queries == list(golden["similarities"])
    assert load_similarities(path) == golden["similarities"]
    metrics = evaluate("CC_WEB_VIDEO", path)
    for metric, expected in golden["expected"].items():
        assert metrics[metric] == pytest.approx(expected, abs=1e-9)


def test_npz_sparse_rows_and_errors(tmp_path: Path) -> None:
    sims = {"q1": {"a": 1.0, "b": 2.0}, "q2": {"a": 0.5, "b": 0.25}, "q3": {"c": -1.0}, "q4": {}}
    path = save_similarities(sims, tmp_path / "s.npz")
    table = SimilarityTable.from_npz(path)
    assert table.to_dict() == sims
    assert table["q1"].positions is table["q2"].positions
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(SimilarityFileError, match="not a dnsvr similarity table"):
        SimilarityTable.from_file(tmp_path / "other.npz")
