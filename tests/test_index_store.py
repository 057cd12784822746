"""IndexStore: round trips, reopen, one add vs many, remove/compact, verify, validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dnsvr.index import (
    DuplicateVideoError,
    IndexConfig,
    IndexFormatError,
    IndexLockedError,
    IndexRecord,
    IndexStore,
    IndexStoreError,
    ReadOnlyIndexError,
    RecordError,
    UnknownVideoError,
)

DC = 32


def make_records(n: int, seed: int = 0, start: int = 0, dtype: str = "uint8") -> list[IndexRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        t = int(rng.integers(1, 25))
        if dtype == "uint8":
            fine = rng.integers(0, 256, (t, 9, 8), dtype=np.uint8)
        else:
            fine = rng.standard_normal((t, 9, 16)).astype(np.float16)
        coarse = rng.standard_normal(DC).astype(np.float32)
        coarse /= np.linalg.norm(coarse)
        sel = None if i % 5 == 0 else float(rng.random())
        ts = np.arange(t) * 1.0 + 0.5 if i % 2 else np.sort(rng.random(t) * 100)
        meta = {"timestamps": ts, "duration": t * 1.0, "source": f"/videos/{i}.mp4", "tag": f"t{i}"}
        out.append(IndexRecord(f"vid{i:04d}", coarse, fine, sel, meta))
    return out


def binary_config(**kw) -> IndexConfig:
    return IndexConfig.binary(dims=64, coarse_dim=DC, **kw)


def assert_matches(store: IndexStore, records: list[IndexRecord]) -> None:
    ids = [r.video_id for r in records]
    assert store.ids() == ids
    for r, f in zip(records, store.fine(ids)):
        assert f.dtype == r.fine.dtype and f.shape == r.fine.shape
        np.testing.assert_array_equal(f, r.fine)
    np.testing.assert_array_equal(store.coarse_vectors(ids), np.stack([r.coarse for r in records]))
    sel = store.selector_values(ids)
    for r, s in zip(records, sel):
        assert (np.isnan(s) and r.selector is None) or s == r.selector
    for r in records[:10]:
        e = store.get(r.video_id)
        np.testing.assert_array_equal(e.timestamps, r.meta["timestamps"])
        assert e.source == r.meta["source"] and e.duration == r.meta["duration"]
        assert e.meta == {"tag": r.meta["tag"]} and e.n_frames == len(r.fine)


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    recs = make_records(40)
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        result = store.add(recs)
        assert result.added == [r.video_id for r in recs]
        assert len(store) == 40 and "vid0003" in store and "nope" not in store
        assert_matches(store, recs)
        assert store.verify().ok
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "numpy" in manifest["written_by"]
    with IndexStore.open(tmp_path / "idx") as store:
        assert_matches(store, recs)
    with IndexStore.open(tmp_path / "idx", readonly=True) as store:
        assert_matches(store, recs)
        with pytest.raises(ReadOnlyIndexError):
            store.add(make_records(1, start=99))


def test_float16_fine(tmp_path: Path) -> None:
    recs = make_records(12, dtype="float16")
    cfg = IndexConfig.float16(dims=16, coarse_dim=DC)
    with IndexStore.create(tmp_path / "idx", cfg) as store:
        store.add(recs)
        assert_matches(store, recs)


def test_one_add_equals_many_adds(tmp_path: Path) -> None:
    recs = make_records(50, seed=3)
    with IndexStore.create(tmp_path / "a", binary_config()) as a:
        a.add(recs)
    with IndexStore.create(tmp_path / "b", binary_config(shard_bytes=4000)) as b:
        for i in range(0, 50, 7):
            b.add(recs[i : i + 7])
    with IndexStore.create(tmp_path / "c", binary_config()) as c:
        c.add(iter(recs), batch_size=3)
    q = np.stack([r.coarse for r in recs[:5]])
    stores = [IndexStore.open(tmp_path / n, readonly=True) for n in "abc"]
    try:
        assert len({s.generation for s in stores}) >= 1
        for s in stores:
            assert_matches(s, recs)
        ref = stores[0].coarse_search(q, k=None)
        assert ref.exact and ref.ids[:, 0].tolist() == [r.video_id for r in recs[:5]]
        for s in stores[1:]:
            hits = s.coarse_search(q, k=None)
            assert hits.ids.tolist() == ref.ids.tolist()
            np.testing.assert_allclose(hits.scores, ref.scores, atol=1e-6)
        # the small shard size spread "b" over several files
        assert len(list((tmp_path / "b" / "shards").iterdir())) > 3
    finally:
        for s in stores:
            s.close()


def test_coarse_search_exact_matches_numpy(tmp_path: Path) -> None:
    recs = make_records(60, seed=5)
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        store.add(recs)
        q = np.random.default_rng(1).standard_normal((3, DC)).astype(np.float32)
        m = np.stack([r.coarse for r in recs])
        truth = q @ m.T
        hits = store.coarse_search(q, k=10)
        assert hits.ids.shape == (3, 10) and hits.exact
        for i in range(3):
            order = np.argsort(-truth[i])[:10]
            assert hits.ids[i].tolist() == [recs[j].video_id for j in order]
            np.testing.assert_allclose(hits.scores[i], truth[i][order], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(hits.positions[i], order)
        every = store.coarse_search(q[0], k=None)
        assert every.ids.shape == (1, 60)
        assert store.coarse_search(q, k=0).ids.shape == (3, 0)
        with pytest.raises(ValueError, match="queries must be"):
            store.coarse_search(np.zeros((2, DC + 1)))


def test_remove_hides_and_compact_reclaims(tmp_path: Path) -> None:
    recs = make_records(30, seed=7)
    with IndexStore.create(tmp_path / "idx", binary_config(shard_bytes=3000)) as store:
        store.add(recs)
        store.coarse_search(recs[0].coarse, k=5)  # load the coarse cache before removing
        gone = {"vid0000", "vid0004", "vid0017"}
        assert store.remove(sorted(gone)) == 3
        kept = [r for r in recs if r.video_id not in gone]
        assert_matches(store, kept)
        hits = store.coarse_search(recs[0].coarse, k=None)
        assert not gone & set(hits.ids[0].tolist()) and hits.ids.shape == (1, 27)
        with pytest.raises(UnknownVideoError, match="vid0004"):
            store.fine(["vid0004"])
        with pytest.raises(UnknownVideoError):
            store.remove(["vid0004"])
        assert store.remove(["vid0004"], missing="ignore") == 0
        before = store.info()
        assert before["removed_pending_compact"] == 3 and before["bytes"]["fine_reclaimable"] > 0
        report = store.compact()
        assert report.purged_videos == 3 and report.bytes_after < report.bytes_before
        after = store.info()
        assert after["bytes"]["fine_reclaimable"] == 0 and after["removed_pending_compact"] == 0
        assert_matches(store, kept)
        assert store.verify().ok
        # removed ids can come back
        store.add([recs[4]])
        assert_matches(store, kept + [recs[4]])
        assert store.compact().purged_videos == 0
    shard_files = sorted(p.name for p in (tmp_path / "idx" / "shards").iterdir())
    with IndexStore.open(tmp_path / "idx", readonly=True) as store:
        assert_matches(store, kept + [recs[4]])
        assert sorted(f for f, _ in store._cat.shard_files.values()) == shard_files  # no orphans left


def test_duplicates(tmp_path: Path) -> None:
    recs = make_records(5)
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        store.add(recs)
        new = make_records(2, seed=9)  # same ids vid0000, vid0001, different data
        with pytest.raises(DuplicateVideoError, match="vid0000"):
            store.add(new)
        assert_matches(store, recs)  # nothing of the failed call was committed
        assert store.verify().ok
        assert store.add(new, on_duplicate="skip").already_indexed == ["vid0000", "vid0001"]
        assert_matches(store, recs)
        res = store.add(new, on_duplicate="replace")
        assert res.replaced == ["vid0000", "vid0001"]
        np.testing.assert_array_equal(store.fine("vid0000")[0], new[0].fine)
        assert sorted(store.ids()) == sorted(r.video_id for r in recs)
        with pytest.raises(DuplicateVideoError, match="twice"):
            store.add([make_records(1, start=50)[0]] * 2)
        assert "vid0050" not in store


def test_validation_errors_name_the_video(tmp_path: Path) -> None:
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        good = make_records(1)[0]
        bad_cases = [
            (good._replace(fine=good.fine.astype(np.float16)), "uint8"),
            (good._replace(fine=good.fine[:, :, :4]), r"\[T, 9, 8\]"),
            (good._replace(fine=good.fine[:0]), "T >= 1"),
            (good._replace(coarse=np.zeros(DC + 1, np.float32)), "coarse vector"),
            (good._replace(coarse=np.full(DC, np.nan, np.float32)), "NaN"),
            (good._replace(selector=float("inf")), "selector"),
            (good._replace(meta={"timestamps": [0.0]}), "timestamps"),
            (good._replace(meta={"x": object()}), "JSON"),
            (good._replace(video_id=""), "non-empty"),
            (good._replace(video_id="a\nb"), "control"),
        ]
        for rec, pattern in bad_cases:
            with pytest.raises(RecordError, match=pattern):
                store.add([good._replace(video_id="first_ok"), rec])
            assert len(store) == 0  # the whole call rolled back
        assert store.verify().ok
        assert not any((tmp_path / "idx" / "shards").iterdir()) or all(
            p.stat().st_size == 0 for p in (tmp_path / "idx" / "shards").iterdir())
        with pytest.raises(ValueError, match="on_duplicate"):
            store.add([good], on_duplicate="maybe")  # type: ignore[arg-type]


def test_create_and_open_path_checks(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        IndexStore.create(tmp_path / "full", binary_config())
    with pytest.raises(IndexFormatError, match="not a dnsvr index"):
        IndexStore.open(tmp_path / "full")
    with pytest.raises(FileNotFoundError):
        IndexStore.open(tmp_path / "missing")
    IndexStore.create(tmp_path / "idx", binary_config()).close()
    with pytest.raises(FileExistsError, match="an index"):
        IndexStore.create(tmp_path / "idx", binary_config())
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="newer"):
        IndexStore.open(tmp_path / "idx")
    with pytest.raises(ValueError, match="fine_dtype"):
        IndexConfig(fine_dtype="bool")


def test_second_writer_refused_in_process(tmp_path: Path) -> None:
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        store.add(make_records(3))
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
            IndexStore.open(tmp_path / "idx")
        with IndexStore.open(tmp_path / "idx", readonly=True) as reader:
            assert len(reader) == 3
    with IndexStore.open(tmp_path / "idx") as again:  # released on close
        assert len(again) == 3


def test_verify_detects_corruption(tmp_path: Path) -> None:
    recs = make_records(10)
    d = tmp_path / "idx"
    with IndexStore.create(d, binary_config()) as store:
        store.add(recs)
        store.coarse_search(recs[0].coarse, k=3)
        entry = store.get("vid0006")
    assert (d / "coarse" / "current.json").is_file()  # the writer appended to the derived matrix
    shard = d / "shards" / "fine-000000.bin"
    with open(shard, "r+b") as fh:
        fh.seek(entry.offset + 5)
        b = fh.read(1)
        fh.seek(entry.offset + 5)
        fh.write(bytes([b[0] ^ 0xFF]))
    with IndexStore.open(d, readonly=True) as store:
        report = store.verify()
        assert not report.ok
        assert [p["video_id"] for p in report.problems] == ["vid0006"]
        assert report.problems[0]["kind"] == "checksum"
        assert store.verify(checksums=False).ok
    # a damaged derived matrix is reported too, and deleting coarse/ repairs it
    cur = json.loads((d / "coarse" / "current.json").read_text())
    vec = np.fromfile(d / "coarse" / cur["vectors"], dtype="<f4").reshape(-1, DC)
    assert len(vec) == 10
    vec[3, 0] += 1.0
    vec.tofile(d / "coarse" / cur["vectors"])
    with IndexStore.open(d, readonly=True) as store:
        kinds = {p["kind"] for p in store.verify(checksums=False).problems}
        assert kinds == {"derived"}
    # a truncated shard
    with open(shard, "r+b") as fh:
        fh.truncate(entry.offset)
    with IndexStore.open(d, readonly=True) as store:
        kinds = {p["kind"] for p in store.verify().problems}
        assert "shard" in kinds and "location" not in kinds


def test_uncommitted_tail_is_ignored_then_truncated(tmp_path: Path) -> None:
    """A crash between the shard write and the SQLite commit leaves bytes past the committed end."""
    recs = make_records(8)
    d = tmp_path / "idx"
    with IndexStore.create(d, binary_config()) as store:
        store.add(recs)
    shard = d / "shards" / "fine-000000.bin"
    size = shard.stat().st_size
    with open(shard, "ab") as fh:
        fh.write(os.urandom(1000))
    with open(d / "shards" / "fine-000001.bin", "wb") as fh:  # a new shard that never committed
        fh.write(os.urandom(100))
    with IndexStore.open(d, readonly=True) as reader:
        report = reader.verify()
        assert report.ok and any("uncommitted" in n for n in report.notes)
        assert_matches(reader, recs)
    with IndexStore.open(d) as writer:  # the writer truncates on open
        assert shard.stat().st_size == size
        assert not (d / "shards" / "fine-000001.bin").exists()
        more = make_records(3, start=8, seed=1)
        writer.add(more)
        assert_matches(writer, recs + more)
        assert writer.verify().ok and not writer.verify().notes


def test_fine_blocks_cover_everything(tmp_path: Path) -> None:
    recs = make_records(40, seed=11)
    with IndexStore.create(tmp_path / "idx", binary_config(shard_bytes=5000)) as store:
        store.add(recs)
        store.remove(["vid0010"])
        by_id = {r.video_id: r for r in recs if r.video_id != "vid0010"}
        seen = []
        for block in store.fine_blocks(max_frames=50):
            assert block.data.shape[0] == block.frame_offsets[-1]
            assert block.data.shape[0] <= 50 or len(block) == 1
            for i, vid in enumerate(block.video_ids):
                np.testing.assert_array_equal(block.video(i), by_id[vid].fine)
                seen.append(vid)
        assert sorted(seen) == sorted(by_id)
        sub = ["vid0003", "vid0030", "vid0002"]
        got = [v for b in store.fine_blocks(sub) for v in b.video_ids]
        assert sorted(got) == sorted(sub)


def test_attrs_and_info(tmp_path: Path) -> None:
    with IndexStore.create(tmp_path / "idx", binary_config(extra={"bundle": "lite"})) as store:
        store.set_attr("whitening", {"fitted_on": 3, "dims": [1, 2]})
        store.add(make_records(4))
        assert store.get_attr("whitening") == {"fitted_on": 3, "dims": [1, 2]}
        assert store.get_attr("missing", 5) == 5
        info = store.info()
        assert info["videos"] == 4 and info["config"]["extra"] == {"bundle": "lite"}
        assert info["bytes_per_video"]["fine"] == pytest.approx(info["frames"] * 72 / 4)
    with IndexStore.open(tmp_path / "idx", readonly=True) as store:
        assert store.attrs() == {"whitening": {"fitted_on": 3, "dims": [1, 2]}}
        assert store.config.extra == {"bundle": "lite"}


def test_saved_catalog_is_used_only_when_current(tmp_path: Path) -> None:
    recs = make_records(30, seed=21)
    d = tmp_path / "idx"
    with IndexStore.create(d, binary_config()) as store:
        store.add(recs[:20])
    assert (d / "catalog.npz").is_file()
    with IndexStore.open(d, readonly=True) as reader:
        assert_matches(reader, recs[:20])
        assert reader.verify().ok
    # commits after the save (as after a kill -9 of a writer, which saves nothing)
    writer = IndexStore.open(d)
    writer.add(recs[20:])
    writer.remove(["vid0003"])
    with IndexStore.open(d, readonly=True) as reader:  # the saved catalog is of an older epoch: SQLite wins
        assert_matches(reader, [r for r in recs if r.video_id != "vid0003"])
    writer.close()
    with IndexStore.open(d) as writer:
        writer.add(make_records(2, start=40, seed=22))  # same epoch: saved catalog + the new rows
    writer2 = IndexStore.open(d)
    writer2.add(make_records(1, start=50, seed=23))
    want = [r for r in recs if r.video_id != "vid0003"] + make_records(2, start=40, seed=22) + make_records(
        1, start=50, seed=23)
    with IndexStore.open(d, readonly=True) as reader:
        assert_matches(reader, want)
    writer2.close()
    (d / "catalog.npz").write_bytes(b"garbage")
    with IndexStore.open(d, readonly=True) as reader:
        assert_matches(reader, want)
        assert reader.verify().ok


def _dot_rounding_bound(q: np.ndarray, vectors: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """How far two float32 evaluations of ``q[i] @ vectors[ids[i, j]]`` may differ, for a ``[n, k]`` id table.

    A D-term float32 dot product summed in any order lies within ``γ_D · Σ|q_i v_i|`` of the exact value
    (Higham, eq. 3.5; ``γ_n = n·u / (1 − n·u)``, ``u = 2⁻²⁴``): two evaluations differ by at most twice that.
    """
    u = 2.0 ** -24
    dims = q.shape[1]
    gamma = dims * u / (1 - dims * u)
    magnitude = np.array([[np.abs(qi).astype(np.float64) @ np.abs(vectors[vid]) for vid in row]
                          for qi, row in zip(q, ids)])
    return 2 * gamma * magnitude + 1e-30


def _derived(d: Path) -> tuple[np.ndarray, np.ndarray]:
    cur = json.loads((d / "coarse" / "current.json").read_text())
    rowids = np.fromfile(d / "coarse" / cur["rowids"], dtype="<i8")
    vectors = np.fromfile(d / "coarse" / cur["vectors"], dtype="<f4").reshape(-1, DC)
    return rowids, vectors


def test_derived_coarse_files_follow_adds_and_survive_damage(tmp_path: Path) -> None:
    import shutil

    recs = make_records(40, seed=31)
    d = tmp_path / "idx"
    q = np.stack([r.coarse for r in recs[:4]])
    with IndexStore.create(d, binary_config()) as store:
        store.add(recs[:10])
        store.add(recs[10:25], batch_size=4)
        rowids, vectors = _derived(d)  # appended at each commit, before any search
        assert len(rowids) == 25 and (np.diff(rowids) > 0).all()
        np.testing.assert_array_equal(vectors, np.stack([r.coarse for r in recs[:25]]))
        ref = store.coarse_search(q, k=None)
        assert store._coarse.missing == 0  # nothing read from SQLite
    # the derived files lost their last rows (as if the writer died between commit and append) and
    # gained a torn partial row: readers fill the gap from SQLite, the next writer rewrites the files
    cur = json.loads((d / "coarse" / "current.json").read_text())
    with open(d / "coarse" / cur["rowids"], "r+b") as fh:
        fh.truncate(20 * 8)
    with open(d / "coarse" / cur["vectors"], "ab") as fh:
        fh.write(b"\x01" * 100)
    with IndexStore.open(d, readonly=True) as reader:
        hits = reader.coarse_search(q, k=None)
        assert hits.ids.tolist() == ref.ids.tolist()
        # The same dot products, but over a matrix assembled from 20 file rows + 5 SQLite rows instead of 25
        # file rows: BLAS picks its blocking (and so its summation order) by shape and CPU, so the scores agree
        # to the rounding of a DC-term float32 dot product, not bit for bit (an AMD EPYC with AVX2 only
        # differed in the last bit, where an Intel Xeon was identical).
        np.testing.assert_array_less(np.abs(hits.scores.astype(np.float64) - ref.scores),
                                     _dot_rounding_bound(q, {r.video_id: r.coarse for r in recs}, ref.ids))
        assert reader._coarse.missing == 5 and reader.verify(checksums=False).ok
    with IndexStore.open(d) as writer:
        writer.add(recs[25:30])
    rowids, vectors = _derived(d)
    assert len(rowids) == 30
    np.testing.assert_array_equal(vectors, np.stack([r.coarse for r in recs[:30]]))
    # no derived data at all: searches still exact, the writer rebuilds it
    shutil.rmtree(d / "coarse")
    with IndexStore.open(d, readonly=True) as reader:
        truth = q @ np.stack([r.coarse for r in recs[:30]]).T
        hits = reader.coarse_search(q, k=None)
        np.testing.assert_allclose(hits.scores, -np.sort(-truth, axis=1), rtol=1e-5, atol=1e-6)
        assert reader.verify().ok
    with IndexStore.open(d) as writer:
        writer.remove([r.video_id for r in recs[:8]])
        hits = writer.coarse_search(q, k=5)
        assert not {r.video_id for r in recs[:8]} & {v for row in hits.ids for v in row}
    rowids, vectors = _derived(d)
    assert len(rowids) == 22  # the rebuild at close kept only the active rows
    with IndexStore.open(d) as writer:
        writer.remove([r.video_id for r in recs[8:12]])
        writer.compact()
        rowids, _ = _derived(d)
        assert len(rowids) == 18 and writer.verify().ok


def test_purged_rows_in_derived_files_are_a_note(tmp_path: Path) -> None:
    """A compaction that stopped after its commit leaves purged rows in the derived files: harmless."""
    recs = make_records(12, seed=41)
    d = tmp_path / "idx"
    with IndexStore.create(d, binary_config()) as store:
        store.add(recs)
        store.remove([r.video_id for r in recs[:3]])
        saved = {p.name: p.read_bytes() for p in (d / "coarse").iterdir()}
        store.compact()
    for p in (d / "coarse").iterdir():
        p.unlink()
    for name, data in saved.items():
        (d / "coarse" / name).write_bytes(data)
    with IndexStore.open(d, readonly=True) as reader:
        report = reader.verify()
        assert report.ok and any("purged" in n for n in report.notes)
        hits = reader.coarse_search(recs[0].coarse, k=None)
        assert hits.ids.shape == (1, 9) and recs[0].video_id not in hits.ids[0].tolist()


def test_snapshot_pins_a_state(tmp_path: Path) -> None:
    recs = make_records(20, seed=51)
    d = tmp_path / "idx"
    with IndexStore.create(d, binary_config(shard_bytes=2000)) as store:
        store.add(recs)
    writer = IndexStore.open(d)
    with IndexStore.open(d, readonly=True) as reader:
        with reader.snapshot():
            ids = reader.ids()
            writer.remove(ids[:5])
            writer.compact()  # deletes every shard file the snapshot mapped
            writer.add(make_records(3, start=30, seed=52))
            assert reader.ids() == ids
            assert_matches(reader, recs)  # fine and coarse of the pinned state, from deleted files
            assert reader.coarse_search(recs[0].coarse, k=1).ids[0, 0] == recs[0].video_id
            with pytest.raises(IndexStoreError, match="verify"):
                reader.verify()
        assert len(reader) == 18 and recs[0].video_id not in reader  # outside: the new state
        assert reader.verify().ok
    with pytest.raises(IndexStoreError, match="snapshot"):
        with writer.snapshot():
            writer.add(make_records(1, start=60))
    writer.close()


def test_record_forms(tmp_path: Path) -> None:
    rng = np.random.default_rng(61)
    fine = rng.integers(0, 256, (3, 9, 8), dtype=np.uint8)
    coarse = rng.standard_normal(DC).astype(np.float32)
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        store.add([("plain", coarse, fine),  # a 3-tuple: no selector, no meta
                   {"video_id": "dict", "coarse": coarse[None, :].astype(np.float64), "fine": fine, "selector": 0.5},
                   IndexRecord("rec", coarse, fine, None, {"source": tmp_path / "a.mp4"})])
        assert store.ids() == ["plain", "dict", "rec"]
        np.testing.assert_array_equal(store.coarse_vectors(), np.stack([coarse] * 3))
        assert np.isnan(store.selector_values(["plain"])[0]) and store.selector_values("dict")[0] == 0.5
        assert store.get("rec").source == str(tmp_path / "a.mp4") and store.get("plain").timestamps is None
        assert store.n_frames().tolist() == [3, 3, 3]
        with pytest.raises(RecordError, match="record dict keys"):
            store.add([{"id": "x"}])
        with pytest.raises(RecordError, match="at most 5"):
            store.add([("x", coarse, fine, None, None, "extra")])


def test_fine_prefetch_reads_the_same_and_merges_ranges(tmp_path: Path, monkeypatch) -> None:
    import mmap

    from dnsvr.index._shards import ShardReader

    recs = make_records(30, seed=3)
    with IndexStore.create(tmp_path / "idx", binary_config()) as store:
        store.add(recs[:20])
        store.add(recs[20:])
    advised: list[list[tuple[int, int, int]]] = []
    real = ShardReader.will_need

    def spy(self, *args):
        out = real(self, *args)
        advised.append(out)
        for shard, start, length in out:
            assert start % mmap.PAGESIZE == 0 and length > 0
            assert start + length <= self._maps[shard][1]
        return out

    monkeypatch.setattr(ShardReader, "will_need", spy)
    with IndexStore.open(tmp_path / "idx", readonly=True) as store:
        ids = [r.video_id for r in recs]
        wanted = ids[::-1] + ids[:3]  # any order, repeats
        plain = [np.array(f) for f in store.fine(wanted)]
        assert advised == []  # only when asked
        got = store.fine(wanted, prefetch=True)
        for a, b in zip(plain, got):
            np.testing.assert_array_equal(a, b)
        # the videos of the small index lie back to back in one shard: one merged range over all of them
        assert len(advised) == 1 and len(advised[0]) == 1
        assert advised[0][0][1] == 0 and advised[0][0][2] >= sum(r.fine.nbytes for r in recs)
        advised.clear()
        store.fine([], prefetch=True)
        store.fine([ids[7]], prefetch=True)
        assert advised == [[(advised[0][0][0], advised[0][0][1], advised[0][0][2])]]
        assert advised[0][0][2] <= recs[7].fine.nbytes + 2 * mmap.PAGESIZE
