"""`dnsvr index ...` and `dnsvr search --json` end to end on feature files (no decoding)."""

from __future__ import annotations

import json

from typer.testing import CliRunner


from dnsvr.bundle import Bundle  # noqa: E402
from dnsvr.cli import app  # noqa: E402
from dnsvr.index.video_index import VideoIndex  # noqa: E402

from helpers import DIMS, make_collection, write_h5  # noqa: E402

runner = CliRunner()


def _plain_bundle_dir(tmp_path):
    return Bundle("plain", "efficientnet_lite0", whitening=None, fine_type="chamfer",
                  fine_args={"dims": DIMS}).save(tmp_path / "bundle")


def test_cli_index_lifecycle_and_search_json(tmp_path):
    videos, groups = make_collection(seed=5, n_groups=3)
    h5 = write_h5(tmp_path / "feats.h5", videos)
    idx = tmp_path / "idx"
    r = runner.invoke(app, ["index", "create", str(idx), "--bundle", str(_plain_bundle_dir(tmp_path))])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "add", str(idx), str(h5), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["videos"] == len(videos)
    r = runner.invoke(app, ["index", "list", str(idx), "--json"])
    listed = json.loads(r.stdout)
    assert {x["video_id"] for x in listed} == set(videos)
    assert all(x["frames"] == videos[x["video_id"]].shape[0] for x in listed)

    q = list(groups)[0]
    r = runner.invoke(app, ["search", str(idx), q, "--top-k", "4", "--budget", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["budget"] == "2" and doc["top_k"] == 4 and len(doc["queries"]) == 1
    res = doc["queries"][0]
    assert res["query"] == q and res["fine_pairs"] == 2 and len(res["results"]) == 4
    for item in res["results"]:
        assert set(item) >= {"video_id", "score", "coarse_score", "selector_score", "fine_score", "segments",
                             "stage", "query_coverage", "target_coverage"}
        assert (item["query_coverage"] is None) == (item["stage"] == "coarse")
        assert item["selector_score"] is None  # no selector: the coarse order stands in
        if item["stage"] == "fine":
            assert isinstance(item["fine_score"], float)
            assert abs(item["score"] - (item["fine_score"] / 2 + 0.5)) < 1e-6
            for seg in item["segments"]:
                assert set(seg) == {"query_start", "query_end", "target_start", "target_end", "score"}
        else:
            assert item["fine_score"] is None and item["segments"] == []
            assert item["score"] == item["coarse_score"]
    assert sum(item["stage"] == "fine" for item in res["results"]) <= 2
    scores = [item["score"] for item in res["results"]]
    assert scores == sorted(scores, reverse=True)
    # the same through the library
    with VideoIndex.open(idx, readonly=True) as index:
        lib = index.search([q], top_k=4, budget=2)[0]
    assert [x.video_id for x in lib.results] == [x["video_id"] for x in res["results"]]

    # rich table output
    r = runner.invoke(app, ["search", str(idx), q, "-k", "3"])
    assert r.exit_code == 0 and groups[q][0] in r.stdout
    r = runner.invoke(app, ["search", str(idx), q, "--budget", "lots"])
    assert r.exit_code != 0
    r = runner.invoke(app, ["search", str(idx), q, "--match", "copy", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", str(idx), q, "--match", "everything"])
    assert r.exit_code == 2 and "--match must be related or copy" in r.output
    r = runner.invoke(app, ["search", str(idx), "missing-id"])
    assert r.exit_code == 2 and "neither" in r.output

    gone = groups[q][0]
    assert runner.invoke(app, ["index", "remove", str(idx), gone]).exit_code == 0
    r = runner.invoke(app, ["index", "info", str(idx), "--json"])
    info = json.loads(r.stdout)
    assert info["videos"] == len(videos) - 1 and info["store"]["removed_pending_compact"] == 1
    assert set(info["scoring"]) >= {"direction", "inset_scale", "coarse_scale"}
    assert runner.invoke(app, ["index", "compact", str(idx)]).exit_code == 0
    r = runner.invoke(app, ["index", "verify", str(idx), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    r = runner.invoke(app, ["search", str(idx), q, "--json", "--top-k", "50"])
    assert gone not in [x["video_id"] for x in json.loads(r.stdout)["queries"][0]["results"]]


def test_cli_errors(tmp_path):
    r = runner.invoke(app, ["index", "info", str(tmp_path)])
    assert r.exit_code == 2 and "not a dnsvr index" in r.output
    r = runner.invoke(app, ["index", "create", str(tmp_path / "x"), "--bundle", "nope"])
    assert r.exit_code == 2 and "lite" in r.output


def test_cli_add_reports_skipped_inputs_with_exit_status_1(tmp_path):
    import numpy as np

    videos, _ = make_collection(seed=7, n_groups=2)
    good = write_h5(tmp_path / "good.h5", videos)
    bad = write_h5(tmp_path / "bad.h5", {"wrong_dims": np.ones((6, 9, DIMS + 8), np.float32)})
    idx = tmp_path / "idx"
    assert runner.invoke(app, ["index", "create", str(idx), "--bundle", str(_plain_bundle_dir(tmp_path))]).exit_code == 0
    r = runner.invoke(app, ["index", "add", str(idx), str(good), str(bad)])
    assert r.exit_code == 1, r.output
    assert "wrong_dims" in r.output
    with VideoIndex.open(idx, readonly=True) as index:
        assert len(index) == len(videos)  # every good video is in
    # a clean add exits 0
    more = write_h5(tmp_path / "more.h5", {f"x_{k}": v for k, v in videos.items()})
    assert runner.invoke(app, ["index", "add", str(idx), str(more)]).exit_code == 0
