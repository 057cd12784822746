"""``dnsvr serve`` over a sharded index: every endpoint answers what it answers over the single index
holding the same videos (search, video lookup, media, jobs, verdicts), in process and on Ray actors."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dnsvr.index.sharded import ShardedIndex  # noqa: E402
from dnsvr.serve import create_app  # noqa: E402
from dnsvr.serve.verdicts import REVIEW_DB  # noqa: E402
from serve_helpers import TOKEN, serve_data  # noqa: E402,F401 - the fixture

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHARDS = 3
SEARCHES = [{"video_id": "orig_1"}, {"video_id": "orig_1", "top_k": 3, "budget": "50%"},
            {"video_id": "orig_0_crop", "top_k": 5, "budget": "2", "segments": False},
            {"video_id": "dist_0", "precision": "int8", "include_self": True, "top_k": 20},
            {"path": "col/orig_0.mp4", "top_k": 5}]


def _client(index: Path, root: Path, **options) -> TestClient:
    options.setdefault("token", TOKEN)
    return TestClient(create_app(index, media_roots=[root], **options))


@pytest.fixture(scope="module")
def pair(serve_data, tmp_path_factory):
    """Private copies: the single index and the same videos split over 3 shards (stored representations copied)."""
    base = tmp_path_factory.mktemp("serve-sharded")
    single = serve_data.fresh_index(base / "single")
    ShardedIndex.split(single, base / "sharded", SHARDS).close()
    with ShardedIndex.open(base / "sharded", readonly=True) as ix:
        assert sum(len(s) > 0 for s in ix.shards) >= 2, "the generated ids should spread over the shards"
    return single, base / "sharded"


def _queries(doc: dict) -> list[dict]:
    return [{k: v for k, v in q.items() if k != "timings"} for q in doc["queries"]]


def assert_same_documents(a: dict, b: dict, tol: float = 1e-6) -> None:
    """Two search documents agree: queries, candidates, pairs, ids and order, segments; scores to ``tol``."""
    qa, qb = _queries(a), _queries(b)
    assert len(qa) == len(qb)
    for x, y in zip(qa, qb):
        assert {k: v for k, v in x.items() if k != "results"} == {k: v for k, v in y.items() if k != "results"}
        assert [r["video_id"] for r in x["results"]] == [r["video_id"] for r in y["results"]]
        for r, s in zip(x["results"], y["results"]):
            for key in ("score", "coarse_score", "fine_score", "selector_score"):
                assert (r[key] is None) == (s[key] is None) and (r[key] is None or abs(r[key] - s[key]) <= tol), key
            assert r["stage"] == s["stage"] and r.get("source") == s.get("source")
            assert len(r["segments"]) == len(s["segments"])
            for u, v in zip(r["segments"], s["segments"]):
                assert {k: w for k, w in u.items() if k != "score"} == {k: w for k, w in v.items() if k != "score"}
                assert abs(u["score"] - v["score"]) <= tol
    assert a["budget"] == b["budget"] and a["top_k"] == b["top_k"] and a["query_ref"] == b["query_ref"]


def _search_all(client: TestClient) -> list[dict]:
    docs = []
    for body in SEARCHES:
        r = client.post("/api/search", json=body)
        assert r.status_code == 200, r.text
        docs.append(r.json())
    return docs


def test_search_and_reads_equal_the_single_index(pair, serve_data):
    single, sharded = pair
    with _client(single, serve_data.root) as one, _client(sharded, serve_data.root) as many:
        for a, b in zip(_search_all(one), _search_all(many)):
            assert_same_documents(a, b)
            assert b["index"] == str(sharded) and "missing_shards" not in b["queries"][0]
        with open(serve_data.query, "rb") as fh:
            up = many.post("/api/search/upload", files={"file": ("orig_0.mp4", fh, "video/mp4")},
                           data={"top_k": "5"})
        assert up.status_code == 200, up.text
        path_doc = many.post("/api/search", json={"path": "col/orig_0.mp4", "top_k": 5}).json()
        assert _queries(up.json()) == _queries(path_doc)
        # the upload is kept at the top of the sharded index, and served back
        assert (sharded / "review-uploads").is_dir() and not any((sharded / n / "review-uploads").exists()
                                                                 for n in ("shard-000", "shard-001", "shard-002"))
        assert many.get("/api/media/file", params={"ref": up.json()["query_ref"]}).content == \
            serve_data.query.read_bytes()

        # the videos: the same set, the same entries (a sharded index lists them shard after shard)
        la, lb = one.get("/api/videos", params={"limit": 1000}).json(), many.get("/api/videos",
                                                                             params={"limit": 1000}).json()
        assert la["total"] == lb["total"] == len(la["videos"]) > 0
        def described(v: dict) -> dict:  # "added" is when the split committed the copy
            return {k: x for k, x in v.items() if k != "added"}

        by_id = {v["video_id"]: described(v) for v in la["videos"]}
        assert {v["video_id"]: described(v) for v in lb["videos"]} == by_id
        for vid in list(by_id)[:3]:
            assert described(many.get(f"/api/videos/{vid}").json()) == by_id[vid]
        assert many.get("/api/videos/nope").status_code == 404
        # media of an indexed video is found through its shard
        for vid in ("orig_1", "orig_0_hflip"):
            fa = one.get("/api/media/frame", params={"ref": f"video:{vid}", "t": 1.0})
            fb = many.get("/api/media/frame", params={"ref": f"video:{vid}", "t": 1.0})
            assert fb.status_code == 200 and fb.content == fa.content
        assert many.get("/api/media/file", params={"ref": "video:nope"}).status_code == 404

        # health, metrics, info: the whole collection
        assert many.get("/api/health").json()["videos"] == one.get("/api/health").json()["videos"]
        ma, mb = one.get("/api/metrics").json(), many.get("/api/metrics").json()
        assert mb["videos"] == ma["videos"] and mb["index_bytes"] > 0
        with ShardedIndex.open(sharded, readonly=True) as ix:
            assert mb["index_bytes"] == sum(
                sum(s.store.info()["bytes"][k] for k in ("fine_shards", "sqlite", "coarse_derived"))
                for s in ix.shards if s.store is not None)
        info = many.get("/api/info").json()
        assert info["shards"] == ["shard-000", "shard-001", "shard-002"] and info["ray"] is None
        assert one.get("/api/info").json()["shards"] is None


def test_verdicts_live_at_the_top_of_a_sharded_index(pair, serve_data):
    _, sharded = pair
    with _client(sharded, serve_data.root) as c:
        body = {"query": "orig_1", "video_id": "orig_1_crop", "verdict": "copy", "query_ref": "video:orig_1",
                "score": 0.9}
        assert c.put("/api/verdicts", json=body, headers=AUTH).status_code == 200
        assert c.get("/api/verdicts").json()["total"] == 1
    # one review file for the whole collection, beside the manifest; the shards stay ordinary indexes
    assert (sharded / REVIEW_DB).is_file()
    assert not any((sharded / f"shard-{i:03d}" / REVIEW_DB).exists() for i in range(SHARDS))
    with ShardedIndex.open(sharded, readonly=True) as ix:
        assert ix.verify(checksums=False).ok
    with _client(sharded, serve_data.root) as c:  # durable across restarts
        assert c.get("/api/verdicts/export").json() == {"orig_1": {"orig_1_crop": "copy"}}
        assert c.delete("/api/verdicts", params={"query": "orig_1", "video_id": "orig_1_crop"},
                        headers=AUTH).status_code == 204


def _wait(client: TestClient, job_id: str, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_jobs_add_and_remove_through_the_shards(pair, serve_data, tmp_path):
    single = serve_data.fresh_index(tmp_path / "single")
    sharded = tmp_path / "sharded"
    shutil.copytree(pair[1], sharded)
    with _client(single, serve_data.root) as one, _client(sharded, serve_data.root) as many:
        for c in (one, many):
            job = _wait(c, c.post("/api/jobs/add", json={"paths": ["extra"]}, headers=AUTH).json()["id"])
            assert job["state"] == "done" and job["added"] == 3, job
            assert c.get("/api/health").json()["videos"] == 10  # the reader sees the commits at once
        with ShardedIndex.open(sharded, readonly=True) as ix:
            for vid in ("new_0", "new_1", "new_2"):  # each in the shard its id names
                assert vid in ix.shards[ix.shard_of(vid)] and vid in ix
            assert ix.verify(checksums=False).ok
        new = {"video_id": "new_1", "top_k": 20, "budget": "100%"}
        assert_same_documents(one.post("/api/search", json=new).json(), many.post("/api/search", json=new).json())
        for c in (one, many):
            job = _wait(c, c.post("/api/jobs/remove", json={"video_ids": ["new_0", "orig_1_crop"]},
                                  headers=AUTH).json()["id"])
            assert job["state"] == "done" and job["removed"] == 2, job
        assert many.get("/api/videos/new_0").status_code == 404
        for body in SEARCHES[:3]:
            assert_same_documents(one.post("/api/search", json=body).json(), many.post("/api/search", json=body).json())


def test_an_unavailable_shard_answers_503_or_a_partial_result(pair, serve_data):
    _, sharded = pair
    for partial in (False, True):
        with _client(sharded, serve_data.root, allow_partial=partial) as c:
            ix = c.app.state.dnsvr.index
            lost = set(ix.shards[1].ids())

            def gone(*args, **kwargs):
                raise OSError("disk unreachable")

            ix.shards[1].store.coarse_search = gone  # the shard's files become unreadable
            r = c.post("/api/search", json={"video_id": "orig_1", "top_k": 20})
            if not partial:
                assert r.status_code == 503, r.text
                assert "shard-001" in r.json()["error"]["message"]
            else:
                assert r.status_code == 200, r.text
                q = r.json()["queries"][0]
                assert q["missing_shards"] == ["shard-001"]
                assert not lost & {x["video_id"] for x in q["results"]}


def test_served_on_ray_actors_equals_the_single_index(pair, serve_data):
    ray = pytest.importorskip("ray")
    from dnsvr.cluster._ray import worker_env

    single, sharded = pair
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=worker_env(), log_to_driver=False)
    try:
        with _client(single, serve_data.root) as one:
            expected = _search_all(one)
        with _client(sharded, serve_data.root, ray="auto") as many:
            group = many.app.state.dnsvr.index._ray_group
            assert group is not None and len(group.actors) == SHARDS  # started with the service
            for a, b in zip(expected, _search_all(many)):
                assert_same_documents(a, b)
            assert many.get("/api/info").json()["ray"] == "auto"
            # a shard whose actor is gone for good: 503 naming it
            ray.kill(group.actors[2], no_restart=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the kill is asynchronous
                r = many.post("/api/search", json={"video_id": "orig_1"})
                if r.status_code != 200:
                    break
                time.sleep(0.2)
            assert r.status_code == 503 and "shard-002" in r.json()["error"]["message"], r.text
        assert ray.is_initialized()  # the service's shutdown stops its actors, not the cluster it joined
    finally:
        ray.shutdown()


def test_a_service_started_on_an_empty_sharded_index_takes_the_first_add(serve_data, tmp_path):
    """The first add fits the lite whitening (at the top, copied into the shards): the running service
    takes it, and searches as the single index built by the same job does."""
    from dnsvr.index.video_index import VideoIndex

    VideoIndex.create(tmp_path / "single").close()
    ShardedIndex.create(tmp_path / "sharded", shards=2).close()
    with _client(tmp_path / "single", serve_data.root) as one, _client(tmp_path / "sharded", serve_data.root) as many:
        assert many.post("/api/search", json={"video_id": "x"}).status_code == 404
        for c in (one, many):
            job = _wait(c, c.post("/api/jobs/add", json={"paths": ["extra"]}, headers=AUTH).json()["id"])
            assert job["state"] == "done" and job["added"] == 3, job
        assert many.app.state.dnsvr.index.bundle.whitened
        for vid in ("new_0", "new_2"):
            body = {"video_id": vid, "top_k": 5, "budget": "100%"}
            assert_same_documents(one.post("/api/search", json=body).json(), many.post("/api/search", json=body).json())


def test_serve_with_ray_but_without_the_extra_says_how_to_install_it(pair, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from dnsvr.cli import app

    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    out = CliRunner().invoke(app, ["serve", str(pair[1]), "--ray", "auto"])
    # refused before the server starts, in one line
    assert out.exit_code != 0 and not started and "pip install 'dnsvr[ray]'" in out.output, out.output
