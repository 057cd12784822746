"""Model bundles: representations, save/load round trips, the lite whitening, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dnsvr.bundle import Bundle, BundleError, lite_coarse_vector, load_bundle
from helpers import student_bundle



def _features(rng, t, dims=64):
    x = rng.standard_normal((t, 9, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("fine_type", ["att", "bin"])
def test_student_bundle_represent_and_roundtrip(tmp_path, fine_type):
    rng = np.random.default_rng(0)
    bundle = student_bundle(fine_type)
    feats = _features(rng, 7)
    rep = bundle.represent(feats)
    assert rep.coarse.shape == (32,) and rep.coarse.dtype == np.float32
    assert abs(np.linalg.norm(rep.coarse) - 1) < 1e-5
    assert isinstance(rep.selector, float)
    with torch.no_grad():
        expected = bundle.fine_net.index_video(torch.from_numpy(feats)).reshape(7, 9, -1).numpy()
        sel = float(bundle.selector_net.index_video(torch.from_numpy(feats)[None]).reshape(-1)[0])
    assert rep.selector == pytest.approx(sel, abs=1e-6)
    if fine_type == "bin":
        assert rep.fine.dtype == np.uint8 and rep.fine.shape == (7, 9, 8)
        np.testing.assert_array_equal(np.unpackbits(rep.fine, axis=-1).astype(int) * 2 - 1, np.sign(expected))
        assert bundle.fine_layout() == ("uint8", (9, 8))
    else:
        assert rep.fine.dtype == np.float16 and rep.fine.shape == (7, 9, 64)
        np.testing.assert_allclose(rep.fine.astype(np.float32), expected, atol=2e-3)
        assert bundle.fine_layout() == ("float16", (9, 64))
    folder = bundle.save(tmp_path / "b")
    cfg = json.loads((folder / "bundle.json").read_text())
    assert cfg["format_version"] == 1 and cfg["fine"]["type"] == fine_type and cfg["coarse"]["type"] == "student"
    assert "dnsvr" in cfg["written_by"]
    again = load_bundle(folder)
    rep2 = again.represent(feats)
    np.testing.assert_array_equal(rep2.fine, rep.fine)
    np.testing.assert_allclose(rep2.coarse, rep.coarse, atol=1e-6)
    assert rep2.selector == pytest.approx(rep.selector, abs=1e-6)
    # selector scores: the MLP over [query self-sim, target self-sim, coarse sim]
    scores = again.selector_scores(0.5, np.array([0.1, 0.9]), np.array([0.3, 0.2]))
    with torch.no_grad():
        direct = bundle.selector_net(torch.tensor([[0.5, 0.1, 0.3], [0.5, 0.9, 0.2]])).reshape(-1).numpy()
    np.testing.assert_allclose(scores, direct, atol=1e-6)
    with pytest.raises(BundleError, match="cannot be recovered"):
        again.base_features(rep.fine)


def test_lite_coarse_vector_and_chamfer_bundle():
    rng = np.random.default_rng(1)
    feats = _features(rng, 5)
    v = lite_coarse_vector(feats)
    expected = feats.reshape(-1, 64).mean(0)
    np.testing.assert_allclose(v, expected / np.linalg.norm(expected), atol=1e-6)
    bundle = Bundle("plain", "efficientnet_lite0", whitening=None, fine_type="chamfer", fine_args={"dims": 64})
    rep = bundle.represent(feats)
    assert rep.selector is None and rep.fine.dtype == np.float16
    np.testing.assert_allclose(bundle.base_features(rep.fine), feats, atol=1e-3)
    assert bundle.selector_scores(None, np.zeros(3), np.zeros(3)) is None
    with pytest.raises(BundleError, match="represents"):
        bundle.represent(feats[:, :, :32])


def test_lite_whitening_fit_save_load(tmp_path):
    from dnsvr.bundle import lite_bundle

    rng = np.random.default_rng(2)
    bundle = lite_bundle(dims=32)
    assert not bundle.whitened and bundle.input_dims == 32
    with pytest.raises(BundleError, match="not fitted"):
        bundle.whiten(rng.standard_normal((3, 9, 100)).astype(np.float32))
    raw = [rng.standard_normal((10, 9, 100)).astype(np.float32) for _ in range(3)]
    bundle.fit_whitening(raw)
    assert bundle.whitened and bundle.input_dims == 32
    white = bundle.whiten(raw[0])
    assert white.shape == (10, 9, 32)
    np.testing.assert_allclose(np.linalg.norm(white, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(bundle.whiten(white), white)  # already whitened: passes through
    folder = bundle.save(tmp_path / "lite")
    again = load_bundle(folder)
    assert again.identity() == bundle.identity()
    np.testing.assert_allclose(again.whiten(raw[1]), bundle.whiten(raw[1]), atol=1e-6)
    # too few vectors for any whitening
    with pytest.raises(BundleError, match="too few"):
        lite_bundle(dims=32).fit_whitening([raw[0][:2]])


def test_load_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="lite"):
        load_bundle("no-such-bundle")
    (tmp_path / "x").mkdir()
    with pytest.raises(BundleError, match="bundle.json"):
        Bundle.load(tmp_path / "x")
    (tmp_path / "x" / "bundle.json").write_text(json.dumps({"format": "dnsvr-bundle", "format_version": 99}))
    with pytest.raises(BundleError, match="newer"):
        Bundle.load(tmp_path / "x")


def test_paper_bundle_offline_error(tmp_path, monkeypatch):
    from dnsvr import weights
    monkeypatch.setenv("DNSVR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(weights.WeightsUnavailableError):
        load_bundle("paper", offline=True)


def test_lite_whitening_keeps_enough_vectors_per_dimension():
    from dnsvr.bundle import WHITENING_VECTORS_PER_DIM, lite_bundle

    rng = np.random.default_rng(5)
    raw = [rng.standard_normal((50, 9, 200)).astype(np.float32) for _ in range(2)]  # 900 vectors
    bundle = lite_bundle()  # asks for 512
    bundle.fit_whitening(raw)
    assert bundle.input_dims == 900 // WHITENING_VECTORS_PER_DIM // 8 * 8 == 40
    # a tiny first add still gets the floor rather than an error
    small = lite_bundle()
    small.fit_whitening([raw[0][:10]])
    assert small.input_dims == 32


def test_selector_scores_in_blocks_equal_one_pass():
    """Many candidates are scored in blocks (SELECTOR_BLOCK rows): the same scores as one pass of the network."""
    from dnsvr.bundle import SELECTOR_BLOCK

    bundle = student_bundle("bin")
    rng = np.random.default_rng(5)
    n = 2 * SELECTOR_BLOCK + 123
    targets, coarse = rng.uniform(0.2, 1.0, n), rng.uniform(-0.2, 1.0, n)
    got = bundle.selector_scores(0.6, targets, coarse)
    x = np.stack([np.full(n, 0.6), targets, coarse], 1).astype(np.float32)
    with torch.inference_mode():
        whole = bundle.selector_net(torch.from_numpy(x)).reshape(-1).numpy()
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6)
    assert np.array_equal(got[:5], bundle.selector_scores(0.6, targets[:5], coarse[:5]))
