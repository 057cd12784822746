"""The chunked coarse stage: chunk vectors, their Chamfer similarity, and the index searching by it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dnsvr.bundle import LITE_COARSE_CHUNKS, Bundle, BundleError, lite_bundle, lite_chunk_vectors, lite_coarse_vector, load_bundle
from dnsvr.index import IndexConfig, IndexRecord, IndexStore
from dnsvr.index import _coarse


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _reference(q: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
    """Pair by pair, the smaller direction of the chunks' Chamfer similarity."""
    out = np.empty((len(q), len(m)))
    for i, a in enumerate(q):
        for j, b in enumerate(m):
            s = a.reshape(k, -1).astype(np.float64) @ b.reshape(k, -1).astype(np.float64).T
            out[i, j] = min(s.max(1).mean(), s.max(0).mean())
    return out


@pytest.mark.parametrize("k", [1, 3, 4])
def test_chunked_similarities_equal_the_pairwise_definition(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    rng = np.random.default_rng(0)
    q = _unit(rng.standard_normal((3, k, 16))).reshape(3, -1)
    m = _unit(rng.standard_normal((50, k, 16))).reshape(50, -1)
    monkeypatch.setattr(_coarse, "CHUNK_BLOCK_ROWS", 7)  # several blocks, a short last one
    got = _coarse.chunked_similarities(q, m, k)
    assert got.shape == (3, 50) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(q, m, k), atol=1e-5)
    np.testing.assert_allclose(_coarse.chunked_similarities(q[:1], m, k), got[:1], atol=1e-6)
    if k == 1:
        np.testing.assert_allclose(got, q @ m.T, atol=1e-6)


def test_lite_chunk_vectors_cut_the_frames_into_stretches() -> None:
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((10, 9, 16)).astype(np.float32)
    v = lite_chunk_vectors(feats, 4)
    assert v.shape == (4, 16) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    # stretch i spans frames floor(i*T/k) .. ceil((i+1)*T/k): 0-3, 2-5, 5-8, 7-10
    for row, (a, b) in zip(v, [(0, 3), (2, 5), (5, 8), (7, 10)]):
        np.testing.assert_allclose(row, lite_coarse_vector(feats[a:b]), atol=1e-6)
    # fewer frames than chunks: frames repeat, no chunk is empty
    short = lite_chunk_vectors(feats[:2], 4)
    np.testing.assert_allclose(short[0], lite_coarse_vector(feats[:1]), atol=1e-6)
    np.testing.assert_allclose(short[-1], lite_coarse_vector(feats[1:2]), atol=1e-6)
    np.testing.assert_allclose(lite_chunk_vectors(feats, 1)[0], lite_coarse_vector(feats), atol=1e-6)


def test_chunks_tell_a_copy_from_a_blend_that_one_mean_vector_cannot() -> None:
    # a query showing A then B; its copy; a distractor showing a blend of A and B all along: the
    # mean vectors of all three are the same direction, the chunks are not
    a, b = np.eye(16, dtype=np.float32)[:2]
    query = np.stack([a] * 6 + [b] * 6)[:, None, :].repeat(9, 1)
    blend = np.stack([_unit(a + b)] * 12)[:, None, :].repeat(9, 1)
    mean_q, mean_blend = lite_coarse_vector(query), lite_coarse_vector(blend)
    assert float(mean_q @ mean_blend) == pytest.approx(1.0, abs=1e-6)
    k = 4
    q, copy, other = (lite_chunk_vectors(x, k).reshape(1, -1) for x in (query, query, blend))
    s = _coarse.chunked_similarities(q, np.concatenate([copy, other]), k)[0]
    assert s[0] == pytest.approx(1.0, abs=1e-6) and s[1] == pytest.approx(np.sqrt(0.5), abs=1e-5)


def test_lite_bundle_and_index_config_take_chunks(tmp_path: Path) -> None:
    bundle = lite_bundle(dims=32)
    assert bundle.coarse_type == "chunks" and bundle.coarse_chunks == LITE_COARSE_CHUNKS == 4
    rng = np.random.default_rng(2)
    bundle.fit_whitening([rng.standard_normal((40, 9, 100)).astype(np.float32) for _ in range(3)])
    rep = bundle.represent(bundle.whiten(rng.standard_normal((12, 9, 100)).astype(np.float32)))
    assert rep.coarse.shape == (bundle.coarse_dims(),) == (4 * 32,)
    again = load_bundle(bundle.save(tmp_path / "b"))
    assert again.coarse_chunks == 4 and again.coarse_dims() == 128
    # a bundle written before chunks (one mean vector) keeps its coarse stage
    old = Bundle("lite", "efficientnet_lite0", whitening=None, fine_type="chamfer", fine_args={"dims": 32})
    assert old.coarse_type == "mean" and old.coarse_chunks == 1
    with pytest.raises(BundleError, match="chunks"):
        Bundle("x", "efficientnet_lite0", fine_type="chamfer", coarse_type="chunks", coarse_args={"chunks": 0})
    cfg = IndexConfig(coarse_dim=128, coarse_chunks=4, fine_dtype="float16", fine_shape=(9, 32))
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
    assert IndexConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "coarse_chunks"}).coarse_chunks == 1
    with pytest.raises(ValueError, match="divisor"):
        IndexConfig(coarse_dim=128, coarse_chunks=3)


def _chunked_store(directory: Path, spec: str, x: np.ndarray, k: int) -> IndexStore:
    cfg = IndexConfig(coarse_dim=x.shape[1], coarse_chunks=k, fine_dtype="uint8", fine_shape=(1, 4),
                      coarse_index=spec, coarse_params="nprobe=16" if spec.startswith("IVF") else "")
    store = IndexStore.create(directory, cfg)
    fine = np.zeros((1, 1, 4), dtype=np.uint8)
    store.add((IndexRecord(f"v{i}", x[i], fine) for i in range(len(x))), batch_size=1000)
    return store


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat"])
def test_store_searches_by_chunked_similarity(tmp_path: Path, spec: str) -> None:
    k, d, n = 4, 16, 1500
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((30, d)))
    x = _unit(centres[rng.integers(0, 30, (n, k))] + 0.3 * rng.standard_normal((n, k, d))).reshape(n, -1)
    q = _unit(x[:5].reshape(5, k, d) + 0.1 * rng.standard_normal((5, k, d))).reshape(5, -1)
    truth = _reference(q, x, k)
    with _chunked_store(tmp_path / "idx", spec, x, k) as store:
        every = store.coarse_search(q, k=None)
        for i in range(5):
            order = np.argsort(-truth[i], kind="stable")
            np.testing.assert_allclose(every.scores[i], truth[i][order], atol=1e-5)
        hits = store.coarse_search(q, k=20)
        assert hits.exact == (spec == "Flat")
        for i in range(5):
            got = hits.ids[i][hits.positions[i] >= 0]
            # whatever the ANN index returns is scored and ranked by the chunked similarity
            want = truth[i][[int(v[1:]) for v in got]]
            np.testing.assert_allclose(hits.scores[i][:len(got)], want, atol=1e-5)
            assert np.all(np.diff(hits.scores[i][:len(got)]) <= 1e-7)
            assert got[0] == f"v{i}"
