"""A sharded index (N ordinary indexes + a manifest) returns exactly what one index of all its videos returns."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dnsvr.nn as nn
from dnsvr.backbones import PCAWhitening
from dnsvr.bundle import Bundle
from dnsvr.index.query import ShardUnavailableError, canonical_order
from dnsvr.index.sharded import ShardedIndex, open_any, shard_for
from dnsvr.index.video_index import VideoIndex, VideoIndexError

from helpers import assert_same_results, make_collection, plain_bundle, student_bundle, write_h5

BUDGETS = ["0", "1", "3", "10%", "35%", "100%", "5,30%"]


def build_pair(tmp_path, bundle_factory, n_shards=3, seed=0):
    videos, groups = make_collection(seed=seed, n_groups=5, copies=2, n_distractors=10)
    h5 = write_h5(tmp_path / "feats.h5", videos)
    single = VideoIndex.create(tmp_path / "single", bundle_factory())
    single.add([h5])
    sharded = ShardedIndex.create(tmp_path / "sharded", bundle_factory(), shards=n_shards)
    report = sharded.add([h5])
    assert sorted(report.added) == sorted(videos)
    return videos, groups, single, sharded


@pytest.mark.parametrize("factory", [plain_bundle, lambda: student_bundle("att")], ids=["chamfer", "students"])
def test_sharded_equals_single_for_every_budget(tmp_path, factory):
    videos, groups, single, sharded = build_pair(tmp_path, factory, n_shards=4)
    sizes = [len(s) for s in sharded.shards]
    assert sum(sizes) == len(videos) == len(single) and min(sizes) > 0  # every shard holds some
    queries = ["g0", "g3", "d0", "g2_c1"]
    for budget in BUDGETS:
        a = single.search(queries, top_k=None, budget=budget, segments=False)
        b = sharded.search(queries, top_k=None, budget=budget, segments=False)
        assert_same_results(a, b)
    assert_same_results(single.search(queries, top_k=5, budget="20%"), sharded.search(queries, top_k=5, budget="20%"))
    # ANN-style top-N coarse candidates: global top-N out of every shard's top-N; and include_self
    assert_same_results(single.search(queries, top_k=None, budget="50%", ann_candidates=7, segments=False),
                        sharded.search(queries, top_k=None, budget="50%", ann_candidates=7, segments=False))
    assert_same_results(single.search(queries, budget="30%", include_self=True, segments=False),
                        sharded.search(queries, budget="30%", include_self=True, segments=False))
    single.close()
    sharded.close()


def test_lite_whitening_fitted_once_and_shared(tmp_path):
    """An unfitted whitening is fitted on the first add at the top and every shard gets the same one."""
    def factory():
        return Bundle("white", "efficientnet_lite0", whitening=PCAWhitening(dims=32), fine_type="chamfer",
                      whitening_dims=32)

    rng = np.random.default_rng(3)
    raw = {f"v{i}": rng.standard_normal((int(rng.integers(6, 12)), 9, 48)).astype(np.float32) for i in range(24)}
    h5 = write_h5(tmp_path / "raw.h5", raw)
    single = VideoIndex.create(tmp_path / "single", factory())
    single.add([h5])
    sharded = ShardedIndex.create(tmp_path / "sharded", factory(), shards=3)
    sharded.add([h5])
    ident = sharded.bundle.identity()
    assert ident["whitening"] is not None and ident == single.bundle.identity()
    for shard in sharded.shards:
        assert json.loads((shard.directory / "index.json").read_text())["bundle"] == ident
    sharded.close()
    reopened = open_any(tmp_path / "sharded", readonly=True)
    assert isinstance(reopened, ShardedIndex) and reopened.verify().ok
    assert_same_results(single.search(["v1", "v7"], top_k=None, budget="40%"),
                        reopened.search(["v1", "v7"], top_k=None, budget="40%"))
    reopened.close()
    single.close()


def test_split_existing_index_and_manage(tmp_path):
    videos, groups, single, sharded = build_pair(tmp_path, lambda: student_bundle("bin"), n_shards=2)
    sharded.close()
    single.close()
    split = ShardedIndex.split(tmp_path / "single", tmp_path / "split", shards=3)
    assert sorted(split.ids()) == sorted(videos) and split.verify().ok
    for i, shard in enumerate(split.shards):
        assert all(shard_for(v, 3) == i for v in shard.ids())
    with VideoIndex.open(tmp_path / "single", readonly=True) as one:
        assert_same_results(one.search(["g0", "g1"], budget="30%"), split.search(["g0", "g1"], budget="30%"))
    info = split.info()
    assert info["videos"] == len(videos) and len(info["shards"]) == 3 and info["store"]["frames"] == sum(
        len(x) for x in videos.values())
    assert split.remove(["g0", "d1"]) == 2 and "g0" not in split and len(split) == len(videos) - 2
    with pytest.raises(KeyError):
        split.remove(["nope", "g1"])
    assert "g1" in split  # nothing removed when an id is unknown
    assert split.compact().purged_videos == 2
    assert split.verify().ok
    split.close()
    with pytest.raises(VideoIndexError, match="sharded index"):
        VideoIndex.open(tmp_path / "split")


def test_manifest_names_are_resolved_inside_the_folder(tmp_path):
    videos, _ = make_collection()
    ShardedIndex.create(tmp_path / "s", plain_bundle(), shards=2).close()
    path = tmp_path / "s" / "index.json"
    manifest = json.loads(path.read_text())
    for bad in (["../elsewhere", "shard-001"], ["/abs", "shard-001"], ["shard-000", "shard-000"]):
        path.write_text(json.dumps({**manifest, "shards": bad}))
        with pytest.raises(VideoIndexError):
            ShardedIndex.open(tmp_path / "s")
    path.write_text(json.dumps(manifest))
    (tmp_path / "s" / "shard-001" / "index.json").unlink()
    with pytest.raises(VideoIndexError, match="shard-001"):
        ShardedIndex.open(tmp_path / "s")


def test_verify_finds_a_misplaced_video_and_another_bundle(tmp_path):
    videos, _, single, sharded = build_pair(tmp_path, plain_bundle, n_shards=2)
    single.close()
    vid = sharded.shards[0].ids()[0]
    rec = sharded.shards[0]._indexed_query(vid)
    # put a video into the wrong shard behind the index's back
    wrong = next(f"z{i}" for i in range(100) if shard_for(f"z{i}", 2) == 0)
    sharded.shards[1]._commit([(wrong, rec.rep.coarse, np.asarray(rec.rep.fine), None, {})], "error")
    report = sharded.verify()
    assert not report.ok and any(p["kind"] == "assignment" and p["video_id"] == wrong for p in report.problems)
    sharded.close()


def test_unavailable_shard_fails_clearly_or_is_marked_missing(tmp_path):
    videos, groups, single, sharded = build_pair(tmp_path, plain_bundle, n_shards=3)
    single.close()
    broken = sharded.shards[1]
    lost = set(broken.ids())

    def gone(*args, **kwargs):
        raise OSError("disk unreachable")

    broken.store.coarse_search = gone  # the shard's files become unreadable
    with pytest.raises(ShardUnavailableError, match="shard-001"):
        sharded.search(["g0"], budget="50%")
    (res,) = sharded.search(["g0"], budget="50%", top_k=None, allow_partial=True)
    assert res.missing_shards == ["shard-001"] and res.to_dict()["missing_shards"] == ["shard-001"]
    assert not lost & {r.video_id for r in res.results} and len(res.results) == len(videos) - len(lost) - 1
    sharded.close()


def _files(folder):
    """Every file under ``folder``: its bytes' digest and its modification time."""
    import hashlib

    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_search_writes_nothing_to_the_shards(tmp_path):
    videos, groups, single, sharded = build_pair(tmp_path, plain_bundle, n_shards=3)
    single.close()
    sharded.close()
    before = _files(tmp_path / "sharded")
    with ShardedIndex.open(tmp_path / "sharded", readonly=True) as ix:
        for budget in ("0", "35%", "100%"):
            ix.search(["g0", "d1"], budget=budget, top_k=None)
        ix.verify()
    assert _files(tmp_path / "sharded") == before


def test_canonical_order_breaks_ties_by_id():
    ids = ["c", "a", "b", "d"]
    scores = np.array([0.5, 0.5, 0.9, 0.5], dtype=np.float32)
    assert [ids[i] for i in canonical_order(ids, scores)] == ["b", "a", "c", "d"]


def test_without_ray_the_single_machine_path_works_and_ray_asks_for_the_extra(tmp_path, monkeypatch):
    """Ray is an optional extra: nothing on the local path imports it; asking for it says how to install it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = None\n"
            "import dnsvr.cli, dnsvr.index.sharded, dnsvr.index.query\n"
            "from dnsvr.cluster import ClusterError\n"
            "from dnsvr.cluster._ray import require_ray\n"
            "try:\n    require_ray()\nexcept ClusterError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(
                             __file__).parents[1] / "src")})
    assert "pip install 'dnsvr[ray]'" in out.stdout
    monkeypatch.setitem(sys.modules, "ray", None)
    for name in ("dnsvr.cluster.search", "dnsvr.cluster.extract"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    videos, groups, single, sharded = build_pair(tmp_path, plain_bundle, n_shards=2)
    sharded.close()
    single.close()
    from dnsvr.cluster import ClusterError

    with pytest.raises(ClusterError, match="dnsvr\\[ray\\]"):
        with ShardedIndex.open(tmp_path / "sharded", readonly=True, ray="local") as index:
            index.search(["g0"])


def test_cli_sharded_lifecycle(tmp_path):
    from typer.testing import CliRunner

    from dnsvr.cli import app

    runner = CliRunner()
    videos, groups = make_collection()
    h5 = write_h5(tmp_path / "f.h5", videos)
    plain_bundle().save(tmp_path / "b")
    one, many, split = tmp_path / "one", tmp_path / "many", tmp_path / "split"
    assert runner.invoke(app, ["index", "create", str(many), "--shards", "3", "--bundle", str(tmp_path / "b")]
                         ).exit_code == 0
    assert runner.invoke(app, ["index", "add", str(many), str(h5)]).exit_code == 0
    r = runner.invoke(app, ["index", "info", str(many), "--json"])
    info = json.loads(r.stdout)
    assert info["videos"] == len(videos) and [s["name"] for s in info["shards"]] == ["shard-000", "shard-001",
                                                                                     "shard-002"]
    assert runner.invoke(app, ["index", "verify", str(many)]).exit_code == 0
    listed = runner.invoke(app, ["index", "list", str(many), "--json"])
    assert sorted(x["video_id"] for x in json.loads(listed.stdout)) == sorted(videos)
    assert runner.invoke(app, ["index", "create", str(one), "--bundle", str(tmp_path / "b")]).exit_code == 0
    assert runner.invoke(app, ["index", "add", str(one), str(h5)]).exit_code == 0
    r = runner.invoke(app, ["index", "shard", str(one), str(split), "--shards", "2"])
    assert r.exit_code == 0, r.output
    docs = [json.loads(runner.invoke(app, ["search", str(d), "g0", "g1", "--json", "--budget", "30%"]).stdout)
            for d in (one, many, split)]
    for doc in docs[1:]:
        for qa, qb in zip(docs[0]["queries"], doc["queries"]):
            assert [x["video_id"] for x in qa["results"]] == [x["video_id"] for x in qb["results"]]
            assert "missing_shards" not in qb
    assert runner.invoke(app, ["index", "compact", str(many)]).exit_code == 0
    r = runner.invoke(app, ["index", "create", str(tmp_path / "bad"), "--shards", "5000"])
    assert r.exit_code == 2 and "shards must lie in" in r.output
