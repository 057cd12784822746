"""``dnsvr serve`` API through the ASGI test client: every endpoint, bad inputs, results equal to the library's."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dnsvr.serve import ServeConfig, create_app  # noqa: E402
from serve_helpers import TOKEN, serve_data  # noqa: E402,F401 - the fixture

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(index: Path, root: Path, **options) -> TestClient:
    options.setdefault("token", TOKEN)
    return TestClient(create_app(index, media_roots=[root], **options))


@pytest.fixture(scope="module")
def client(serve_data):
    with _client(serve_data.index, serve_data.root) as c:
        yield c


def _library(index: Path, query: str, **kwargs):
    from dnsvr.index.video_index import VideoIndex

    with VideoIndex.open(index, readonly=True) as ix:
        return [q.to_dict() for q in ix.search([query], progress=False, **kwargs)]


def _strip_timings(queries):
    return [{k: v for k, v in q.items() if k != "timings"} for q in queries]


# -- search: the same results as the library ---------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"top_k": 3, "budget": "50%"}, {"top_k": 5, "budget": "2", "segments": False},
                                    {"precision": "int8", "include_self": True}])
def test_search_by_id_equals_library(client, serve_data, params):
    r = client.post("/api/search", json={"video_id": "orig_1", **params})
    assert r.status_code == 200, r.text
    doc = r.json()
    lib_kwargs = {"top_k": params.get("top_k", 10), "budget": params.get("budget"),
                  "segments": params.get("segments", True), "include_self": params.get("include_self", False)}
    if "precision" in params:
        lib_kwargs["precision"] = params["precision"]
    expected = _library(serve_data.index, "orig_1", **lib_kwargs)
    assert _strip_timings(doc["queries"]) == _strip_timings(expected)
    assert doc["query_ref"] == "video:orig_1" and doc["top_k"] == params.get("top_k", 10)
    ids = [x["video_id"] for x in doc["queries"][0]["results"]]
    assert ("orig_1" in ids) == params.get("include_self", False)


def test_search_json_is_the_cli_document(client, serve_data):
    from typer.testing import CliRunner

    from dnsvr.cli import app

    out = CliRunner().invoke(app, ["search", str(serve_data.index), "orig_1", "--json", "--top-k", "4"])
    assert out.exit_code == 0, out.output
    cli_doc = json.loads(out.stdout)
    doc = client.post("/api/search", json={"video_id": "orig_1", "top_k": 4}).json()
    assert set(doc) - {"query_ref"} == set(cli_doc)
    assert doc["budget"] == cli_doc["budget"] and doc["top_k"] == cli_doc["top_k"]
    assert _strip_timings(doc["queries"]) == _strip_timings(cli_doc["queries"])


def test_search_by_path_and_upload_equal_library(client, serve_data):
    expected = _strip_timings(_library(serve_data.index, str(serve_data.query), top_k=5))
    r = client.post("/api/search", json={"path": "col/orig_0.mp4", "top_k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["query_ref"] == "path:col/orig_0.mp4"
    assert _strip_timings(r.json()["queries"]) == expected
    top = [x["video_id"] for x in r.json()["queries"][0]["results"][:2]]
    assert set(top) == {"orig_0_crop", "orig_0_hflip"}  # its copies first
    # absolute paths inside a root work too
    r = client.post("/api/search", json={"path": str(serve_data.query), "top_k": 5})
    assert r.status_code == 200 and _strip_timings(r.json()["queries"]) == expected

    with open(serve_data.query, "rb") as fh:
        r = client.post("/api/search/upload", files={"file": ("orig_0.mp4", fh, "video/mp4")}, data={"top_k": "5"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["query_ref"].startswith("upload:") and doc["queries"][0]["query"] == "orig_0"
    assert _strip_timings(doc["queries"]) == expected
    # the upload is kept for review: its frames and bytes are served
    f = client.get("/api/media/frame", params={"ref": doc["query_ref"], "t": 1.0})
    assert f.status_code == 200 and f.headers["content-type"] == "image/jpeg"
    assert client.get("/api/media/file", params={"ref": doc["query_ref"]}).content == serve_data.query.read_bytes()


# -- bad inputs -------------------------------------------------------------------------------------------
def _err(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["status"] == status and body["error"]["message"]
    return body["error"]["message"]


def test_bad_search_inputs(client, serve_data, tmp_path):
    assert "unknown video id" in _err(client.post("/api/search", json={"video_id": "nope"}), 404)
    assert "'..'" in _err(client.post("/api/search", json={"path": "../idx/index.json"}), 400)
    assert "'..'" in _err(client.post("/api/search", json={"path": "col/../../x.mp4"}), 400)
    assert "outside" in _err(client.post("/api/search", json={"path": "/etc/passwd"}), 403)
    _err(client.post("/api/search", json={"path": "col/missing.mp4"}), 404)
    assert "budget" in _err(client.post("/api/search", json={"video_id": "orig_1", "budget": "lots"}), 422)
    _err(client.post("/api/search", json={"video_id": "orig_1", "budget": "150%"}), 422)
    _err(client.post("/api/search", json={"video_id": "orig_1", "top_k": 0}), 422)
    _err(client.post("/api/search", json={"video_id": "orig_1", "precision": "fp8"}), 422)
    _err(client.post("/api/search", json={"video_id": "orig_1", "path": "col/orig_0.mp4"}), 422)
    _err(client.post("/api/search", json={}), 422)
    _err(client.post("/api/search", json={"video_id": "orig_1", "surprise": 1}), 422)
    _err(client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}), 422)
    _err(client.get("/api/nowhere"), 404)
    # a symlink inside the root that points outside it does not escape
    link = serve_data.root / "escape.mp4"
    if not link.exists():
        os.symlink("/etc/passwd", link)
    assert "outside" in _err(client.post("/api/search", json={"path": "escape.mp4"}), 403)
    assert "outside" in _err(client.get("/api/media/file", params={"ref": "path:escape.mp4"}), 403)


def test_bad_uploads(client, serve_data, tmp_path):
    r = client.post("/api/search/upload", files={"file": ("notes.txt", io.BytesIO(b"hello"), "text/plain")})
    assert "video files" in _err(r, 415)
    r = client.post("/api/search/upload", files={"file": ("fake.mp4", io.BytesIO(b"\x00" * 4096), "video/mp4")})
    assert "not a usable video" in _err(r, 415)
    _err(client.post("/api/search/upload", files={"file": ("e.mp4", io.BytesIO(b""), "video/mp4")}), 415)
    _err(client.post("/api/search/upload", data={"top_k": "3"}), 422)  # no file
    with open(serve_data.query, "rb") as fh:
        r = client.post("/api/search/upload", files={"file": ("q.mp4", fh, "video/mp4")}, data={"budget": "x"})
    _err(r, 422)
    # nothing half-received is left behind
    assert not any((serve_data.index / "review-uploads" / ".incoming").iterdir())


def test_oversize_upload_and_body(serve_data):
    small = serve_data.query.stat().st_size // 2
    with _client(serve_data.index, serve_data.root, max_upload_bytes=small) as c:
        with open(serve_data.query, "rb") as fh:
            r = c.post("/api/search/upload", files={"file": ("q.mp4", fh, "video/mp4")})
        assert "larger than" in _err(r, 413)
        # a streamed (chunked) body without Content-Length is cut off at the limit too

        def chunks():
            yield (b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
                   b"Content-Type: video/mp4\r\n\r\n")
            for _ in range(small // 1000 + 100):
                yield b"\0" * 1000
            yield b"\r\n--XX--\r\n"

        r = c.post("/api/search/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=XX"})
        assert "larger than" in _err(r, 413)
        # a JSON body past the limit is refused before parsing
        _err(c.post("/api/search", content=b"x" * (2 << 20), headers={"content-type": "application/json"}), 413)


def test_long_query_refused(serve_data):
    with _client(serve_data.index, serve_data.root, max_query_seconds=2.0) as c:
        assert "lasts" in _err(c.post("/api/search", json={"path": "col/orig_0.mp4"}), 413)


# -- tokens --------------------------------------------------------------------------------------------
def test_writes_need_the_token(client):
    body = {"query": "orig_1", "video_id": "orig_1_crop", "verdict": "copy"}
    _err(client.put("/api/verdicts", json=body), 401)
    _err(client.put("/api/verdicts", json=body, headers={"Authorization": "Bearer wrong-token-xx"}), 401)
    _err(client.post("/api/jobs/remove", json={"video_ids": ["dist_0"]}), 401)
    _err(client.post("/api/jobs/add", json={"paths": ["extra"]}), 401)
    # a token in the URL is not enough to write (only reads by <img>/<video> use it)
    _err(client.put("/api/verdicts", json=body, params={"token": TOKEN}), 401)
    _err(client.delete("/api/verdicts", params={"query": "a", "video_id": "b"}), 401)


def test_without_token_writes_are_disabled(serve_data):
    with TestClient(create_app(serve_data.index, media_roots=[serve_data.root])) as c:
        assert c.get("/api/health").status_code == 200
        r = c.put("/api/verdicts", json={"query": "q", "video_id": "v", "verdict": "copy"}, headers=AUTH)
        assert "without a token" in _err(r, 403)


def test_public_binding_needs_the_token_for_everything(serve_data):
    with pytest.raises(ValueError, match="token"):
        ServeConfig(index_path=serve_data.index, public=True)
    with _client(serve_data.index, serve_data.root, public=True) as c:
        assert c.get("/api/health").status_code == 200  # liveness stays open
        _err(c.get("/api/videos"), 401)
        _err(c.get("/api/metrics"), 401)
        _err(c.post("/api/search", json={"video_id": "orig_1"}), 401)
        _err(c.get("/api/media/frame", params={"ref": "video:orig_1"}), 401)
        assert c.get("/api/videos", headers=AUTH).status_code == 200
        # <img>/<video> GETs may carry the token in the query string
        assert c.get("/api/media/frame", params={"ref": "video:orig_1", "token": TOKEN}).status_code == 200
        _err(c.post("/api/search", json={"video_id": "orig_1"}, params={"token": TOKEN}), 401)
        assert c.post("/api/search", json={"video_id": "orig_1"}, headers=AUTH).status_code == 200


# -- videos and media ------------------------------------------------------------------------------------
def test_videos(client):
    r = client.get("/api/videos").json()
    assert r["total"] == 7 and {v["video_id"] for v in r["videos"]} >= {"orig_1", "orig_0_crop", "dist_1"}
    assert client.get("/api/videos", params={"contains": "crop"}).json()["total"] == 2
    v = client.get("/api/videos/orig_1").json()
    assert v["frames"] == 12 and v["ref"] == "video:orig_1" and abs(v["duration"] - 12.0) < 0.2
    _err(client.get("/api/videos/nope"), 404)
    _err(client.get("/api/videos", params={"limit": 0}), 422)


def test_media_frames_sheets_and_ranges(client, serve_data):
    from PIL import Image

    info = client.get("/api/media/info", params={"ref": "video:orig_1"}).json()
    assert info["width"] == 160 and info["height"] == 96 and abs(info["duration"] - 12.0) < 0.2
    a = client.get("/api/media/frame", params={"ref": "video:orig_1", "t": 0.5, "w": 80})
    b = client.get("/api/media/frame", params={"ref": "video:orig_1", "t": 4.5, "w": 80})
    assert a.status_code == b.status_code == 200
    img = Image.open(io.BytesIO(a.content))
    assert img.size == (80, 48) and a.content != b.content
    sheet = client.get("/api/media/sheet", params={"ref": "path:col/orig_0.mp4", "start": 1, "end": 4, "n": 4,
                                                   "w": 64})
    assert sheet.status_code == 200 and Image.open(io.BytesIO(sheet.content)).size == (4 * 64 + 3 * 2, 38)
    path = serve_data.root / "col" / "orig_1.mp4"
    data = path.read_bytes()
    full = client.get("/api/media/file", params={"ref": "video:orig_1"})
    assert full.status_code == 200 and full.content == data and full.headers["content-type"] == "video/mp4"
    part = client.get("/api/media/file", params={"ref": "video:orig_1"}, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get("/api/media/file", params={"ref": "video:orig_1"}, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    bad = client.get("/api/media/file", params={"ref": "video:orig_1"}, headers={"Range": f"bytes={len(data) + 10}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    # bad references and arguments
    _err(client.get("/api/media/frame", params={"ref": "file:/etc/passwd"}), 400)
    _err(client.get("/api/media/frame", params={"ref": "video:nope"}), 404)
    _err(client.get("/api/media/frame", params={"ref": "upload:../../etc"}), 400)
    _err(client.get("/api/media/frame", params={"ref": "upload:" + "0" * 32}), 404)
    _err(client.get("/api/media/file", params={"ref": "path:../idx/index.json"}), 400)
    _err(client.get("/api/media/frame", params={"ref": "video:orig_1", "t": -1}), 422)
    _err(client.get("/api/media/sheet", params={"ref": "video:orig_1", "start": 3, "end": 1}), 400)
    _err(client.get("/api/media/sheet", params={"ref": "video:orig_1", "start": 0, "end": 1, "n": 99}), 422)
    _err(client.get("/api/media/frame"), 422)


# -- jobs: add and remove in the background while searches go on -----------------------------------------------
def _wait(c, job_id, timeout=300.0):
    deadline = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < deadline:
        job = c.get(f"/api/jobs/{job_id}").json()
        seen.add(job["state"])
        if job["state"] in ("done", "failed"):
            return job, seen
        # reads go on while the job writes
        assert c.post("/api/search", json={"video_id": "orig_1", "top_k": 3}).status_code == 200
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.slow
def test_add_and_remove_jobs(serve_data, tmp_path):
    index = serve_data.fresh_index(tmp_path / "idx")
    with _client(index, serve_data.root) as c:
        _err(c.post("/api/jobs/add", json={"paths": ["../x"]}, headers=AUTH), 400)
        _err(c.post("/api/jobs/add", json={"paths": ["/etc"]}, headers=AUTH), 403)
        _err(c.post("/api/jobs/add", json={"paths": []}, headers=AUTH), 422)
        # a list file could name any path: refused; so is a symlink in a folder that leads outside
        (serve_data.root / "list.txt").write_text(f"{serve_data.query}\n")
        _err(c.post("/api/jobs/add", json={"paths": ["list.txt"]}, headers=AUTH), 415)
        sneaky = serve_data.root / "sneaky"
        sneaky.mkdir(exist_ok=True)
        outside = tmp_path / "outside.mp4"
        outside.write_bytes(serve_data.query.read_bytes())
        if not (sneaky / "link.mp4").exists():
            os.symlink(outside, sneaky / "link.mp4")
        assert "nothing to add" in _err(c.post("/api/jobs/add", json={"paths": ["sneaky"]}, headers=AUTH), 422)
        r = c.post("/api/jobs/add", json={"paths": ["extra"]}, headers=AUTH)
        assert r.status_code == 202, r.text
        job, seen = _wait(c, r.json()["id"])
        assert job["state"] == "done", job
        assert job["added"] == 3 and job["total"] == 3 and job["done"] == 3 and not job["failures"]
        assert c.get("/api/health").json()["videos"] == 10
        # the new videos are searchable through the service's read-only handle at once
        hit = c.post("/api/search", json={"path": "extra/new_1.mp4", "top_k": 1}).json()
        assert hit["queries"][0]["results"][0]["video_id"] == "new_1"
        _err(c.post("/api/jobs/remove", json={"video_ids": ["nope"], "missing": "error"}, headers=AUTH), 404)
        r = c.post("/api/jobs/remove", json={"video_ids": ["new_0", "dist_0"]}, headers=AUTH)
        job, _ = _wait(c, r.json()["id"])
        assert job["state"] == "done" and job["removed"] == 2
        assert c.get("/api/health").json()["videos"] == 8
        _err(c.get("/api/videos/new_0"), 404)
        assert len(c.get("/api/jobs").json()) == 2
        _err(c.get("/api/jobs/nope"), 404)
    from dnsvr.index.video_index import VideoIndex

    with VideoIndex.open(index, readonly=True) as ix:
        assert ix.verify().ok


def test_job_fails_cleanly_when_another_writer_holds_the_lock(serve_data, tmp_path):
    from dnsvr.index.video_index import VideoIndex

    index = serve_data.fresh_index(tmp_path / "idx")
    with _client(index, serve_data.root) as c, VideoIndex.open(index) as _writer:
        r = c.post("/api/jobs/remove", json={"video_ids": ["dist_0"]}, headers=AUTH)
        job, _ = _wait(c, r.json()["id"], timeout=60)
        assert job["state"] == "failed" and job["error"]
        assert c.get("/api/health").json()["videos"] == 7


# -- verdicts -------------------------------------------------------------------------------------------
def test_verdicts_durable_listed_exported_as_benchmark(serve_data, tmp_path):
    from dnsvr.eval import CustomBenchmark

    index = serve_data.fresh_index(tmp_path / "idx")
    with _client(index, serve_data.root) as c:
        put = lambda **b: c.put("/api/verdicts", json=b, headers=AUTH)  # noqa: E731
        assert put(query="orig_1", video_id="orig_1_crop", verdict="copy", note="cropped").status_code == 200
        assert put(query="orig_1", video_id="orig_1_hflip", verdict="related", score=0.8).status_code == 200
        assert put(query="orig_1", video_id="dist_0", verdict="not_related").status_code == 200
        # a second verdict on the same pair replaces the first
        v = put(query="orig_1", video_id="orig_1_hflip", verdict="partial", query_ref="video:orig_1").json()
        assert v["verdict"] == "partial" and v["query_ref"] == "video:orig_1"
        _err(put(query="orig_1", video_id="x", verdict="maybe"), 422)
        _err(put(query="", video_id="x", verdict="copy"), 422)
        _err(put(query="q", video_id="x", verdict="copy", note="n" * 3000), 422)
        assert c.delete("/api/verdicts", params={"query": "orig_1", "video_id": "dist_0"}, headers=AUTH).status_code == 204
        _err(c.delete("/api/verdicts", params={"query": "orig_1", "video_id": "dist_0"}, headers=AUTH), 404)
        put(query="orig_1", video_id="dist_1", verdict="not_related")
    # durable: a new service on the same index lists them
    with _client(index, serve_data.root) as c:
        listed = c.get("/api/verdicts").json()
        assert listed["total"] == 3
        assert {(v["video_id"], v["verdict"]) for v in listed["verdicts"]} == {
            ("orig_1_crop", "copy"), ("orig_1_hflip", "partial"), ("dist_1", "not_related")}
        assert c.get("/api/verdicts", params={"query": "other"}).json()["total"] == 0
        r = c.get("/api/verdicts/export")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        gt = r.json()
        sims = {q["query"]: {x["video_id"]: x["score"] for x in q["results"]}
                for q in c.post("/api/search", json={"video_id": "orig_1", "top_k": 100}).json()["queries"]}
    assert gt == {"orig_1": {"orig_1_crop": "copy", "orig_1_hflip": "partial", "dist_1": "not_related"}}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    bench = CustomBenchmark.from_file(path, positive_labels=["copy", "partial"])
    assert bench.positives == {"orig_1": {"orig_1_crop", "orig_1_hflip"}}
    result = bench.evaluate_detailed(sims)
    assert 0.0 < result.metrics["mAP"] <= 1.0
    # the verdicts live beside the index, not inside its store
    assert (index / "review.sqlite").is_file()
    from dnsvr.index.video_index import VideoIndex

    with VideoIndex.open(index, readonly=True) as ix:
        assert ix.verify().ok


# -- health, metrics, OpenAPI, page -----------------------------------------------------------------------
def test_health_metrics_openapi_page(serve_data):
    with _client(serve_data.index, serve_data.root) as c:
        assert c.get("/api/health").json() == {"status": "ok", "videos": 7}
        m0 = c.get("/api/metrics").json()
        assert m0["queries_served"] == 0 and m0["videos"] == 7 and m0["index_bytes"] > 0
        for _ in range(3):
            c.post("/api/search", json={"video_id": "orig_1", "top_k": 2})
        c.post("/api/search", json={"video_id": "nope"})
        m = c.get("/api/metrics").json()
        assert m["queries_served"] == 3
        assert 0 < m["search"]["p50_ms"] <= m["search"]["p99_ms"]
        assert m["requests"]["/api/search"]["count"] == 4 and m["requests"]["/api/search"]["failed"] == 1
        spec = c.get("/openapi.json").json()
        for path in ("/api/search", "/api/search/upload", "/api/jobs/add", "/api/jobs/remove", "/api/verdicts",
                     "/api/verdicts/export", "/api/media/frame", "/api/media/sheet", "/api/media/file",
                     "/api/videos", "/api/health", "/api/metrics"):
            assert path in spec["paths"], path
        page = c.get("/")
        assert page.status_code == 200 and "<title>dnsvr" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # nothing from another host
        assert c.get("/app.js").status_code == 200
        info = c.get("/api/info").json()
        assert info["writes"] and not info["token_for_reads"] and info["media_roots"]


def test_busy_and_timeout(serve_data):
    """Searches beyond the queue answer 503; a search past its time limit answers 504."""
    import asyncio

    from dnsvr.serve.errors import ApiError
    from dnsvr.serve.state import ServiceState

    cfg = ServeConfig(index_path=serve_data.index, max_concurrent_searches=1, max_queued_searches=0,
                      search_timeout_s=0.2)
    state = ServiceState(cfg)
    try:
        async def scenario():
            slow = asyncio.ensure_future(state.run_bounded(lambda: time.sleep(0.6)))
            await asyncio.sleep(0.05)
            with pytest.raises(ApiError) as busy:
                await state.run_bounded(lambda: 1)
            assert busy.value.status == 503
            with pytest.raises(ApiError) as late:
                await slow
            assert late.value.status == 504
            await asyncio.sleep(0.6)
            assert await state.run_bounded(lambda: 7) == 7  # the slot is free again

        asyncio.run(scenario())
    finally:
        state.close()


# -- the command --------------------------------------------------------------------------------------------
def test_serve_command(serve_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import uvicorn

    from dnsvr.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    runner = CliRunner()
    # beyond loopback without a token: refused before anything listens
    out = runner.invoke(app, ["serve", str(serve_data.index), "--host", "0.0.0.0"])
    assert out.exit_code == 2 and "token" in out.output and not calls
    token_file = tmp_path / "token"
    token_file.write_text("file-token-123456\n")
    out = runner.invoke(app, ["serve", str(serve_data.index), "--host", "0.0.0.0", "--port", "8123",
                              "--token-file", str(token_file), "--media-root", str(serve_data.root)])
    assert out.exit_code == 0, out.output
    served, kw = calls[-1]
    assert kw["host"] == "0.0.0.0" and kw["port"] == 8123
    with TestClient(served) as c:
        _err(c.get("/api/videos"), 401)
        assert c.get("/api/videos", headers={"Authorization": "Bearer file-token-123456"}).status_code == 200
    # loopback without a token: a fresh one, printed in the page's link
    out = runner.invoke(app, ["serve", str(serve_data.index)])
    assert out.exit_code == 0 and "#token=" in out.output
    token = out.output.split("#token=")[1].split()[0]
    with TestClient(calls[-1][0]) as c:
        assert c.get("/api/videos").status_code == 200
        r = c.put("/api/verdicts", json={"query": "q", "video_id": "v", "verdict": "copy"},
                  headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert c.delete("/api/verdicts", params={"query": "q", "video_id": "v"},
                        headers={"Authorization": f"Bearer {token}"}).status_code == 204
    out = runner.invoke(app, ["serve", str(tmp_path / "nothing")])
    assert out.exit_code == 2
