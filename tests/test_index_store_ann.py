"""ANN coarse search (FAISS IVF / HNSW specs) against exact search on clustered synthetic vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dnsvr.index import IndexConfig, IndexRecord, IndexStore

D = 64
N = 20_000


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(directory: Path, spec: str, params: str, x: np.ndarray) -> IndexStore:
    cfg = IndexConfig(coarse_dim=D, fine_dtype="uint8", fine_shape=(1, 4), coarse_index=spec, coarse_params=params)
    store = IndexStore.create(directory, cfg)
    fine = np.zeros((1, 1, 4), dtype=np.uint8)
    store.add((IndexRecord(f"v{i}", x[i], fine) for i in range(len(x))), batch_size=5000)
    return store


def recall_at(store: IndexStore, q: np.ndarray, k: int) -> float:
    exact = store.coarse_search(q, k=k, exact=True)
    approx = store.coarse_search(q, k=k)
    assert exact.exact and not approx.exact
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx.ids, exact.ids)]
    return float(np.mean(hits)) / k


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "params"), [("IVF64,Flat", "nprobe=16"), ("HNSW32", "efSearch=256")])
def test_ann_recall_at_100(tmp_path: Path, spec: str, params: str) -> None:
    x = clustered(N, D, clusters=100, seed=0)
    rng = np.random.default_rng(1)
    q = x[rng.choice(N, 50, replace=False)] + 0.1 * rng.standard_normal((50, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    with build(tmp_path / "idx", spec, params, x) as store:
        r = recall_at(store, q, 100)
        assert r >= 0.95, f"{spec} recall@100 = {r:.3f}"
        # removed videos never come back from the ANN index
        top = store.coarse_search(q[:5], k=10).ids
        gone = sorted({v for row in top for v in row.tolist()})
        store.remove(gone)
        after = store.coarse_search(q[:5], k=100)
        assert not set(gone) & {v for row in after.ids for v in row.tolist()}
        assert (after.positions >= 0).all()
        assert recall_at(store, q, 100) >= 0.95
        # adds after the ANN index was built are searchable
        store.add([IndexRecord("new", q[0], np.zeros((1, 1, 4), np.uint8))])
        assert store.coarse_search(q[:1], k=1).ids[0, 0] == "new"
        before = store.coarse_search(q, k=100)
    cur = json.loads((tmp_path / "idx" / "coarse" / "current.json").read_text())
    assert cur["ann"]["spec"] == spec and (tmp_path / "idx" / "coarse" / cur["ann"]["index"]).is_file()
    with IndexStore.open(tmp_path / "idx", readonly=True) as store:  # reuses the saved ANN index
        again = store.coarse_search(q, k=100)
        assert again.ids.tolist() == before.ids.tolist()
        assert store.verify(checksums=False).ok


def test_ann_spec_falls_back_to_exact_when_small(tmp_path: Path) -> None:
    x = clustered(200, D, clusters=5, seed=2)
    with build(tmp_path / "idx", "IVF64,Flat", "nprobe=4", x) as store:
        hits = store.coarse_search(x[:3], k=5)
        assert hits.exact and hits.ids[:, 0].tolist() == ["v0", "v1", "v2"]


def test_set_coarse_index_switches_spec(tmp_path: Path) -> None:
    x = clustered(3000, D, clusters=20, seed=4)
    with build(tmp_path / "idx", "Flat", "", x) as store:
        assert store.coarse_search(x[:2], k=10).exact
        with pytest.raises(ValueError, match="invalid coarse index spec"):
            store.set_coarse_index("NotAnIndex42")
        store.set_coarse_index("IVF16,Flat", "nprobe=16")
        hits = store.coarse_search(x[:2], k=10)
        assert not hits.exact and hits.ids[:, 0].tolist() == ["v0", "v1"]
        store.build_coarse_index()
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["config"]["coarse_index"] == "IVF16,Flat" and manifest["config"]["coarse_params"] == "nprobe=16"
    with IndexStore.open(tmp_path / "idx", readonly=True) as store:
        assert store.config.coarse_index == "IVF16,Flat"
        assert not store.coarse_search(x[:2], k=10).exact
        assert store.verify(checksums=False).ok
