"""Fitting PCA whitening on one's own features: incremental = batch = closed form; save/load; identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnsvr.backbones import PCAWhitening


def _data(seed: int = 0, n: int = 3000, c: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.1, c)
    basis, _ = np.linalg.qr(rng.normal(size=(c, c)))
    return (rng.normal(size=(n, c)) * scales) @ basis.T + rng.normal(size=c) * 3


def test_incremental_fit_equals_one_shot_and_whitens() -> None:
    x = _data()
    one = PCAWhitening(dims=8).fit(x)
    inc = PCAWhitening(dims=8)
    for chunk in np.array_split(x, 7):
        inc.partial_fit(torch.from_numpy(chunk.astype(np.float32)).reshape(-1, 1, x.shape[1]))
    inc.finalize()
    # mean and covariance agree with numpy's closed form
    np.testing.assert_allclose(one.mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(inc.mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-4)
    top = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1][:8]
    np.testing.assert_allclose(one._eigenvalues, top, rtol=1e-5)
    np.testing.assert_allclose(inc._eigenvalues, top, rtol=1e-4)
    q = torch.from_numpy(x[:50].astype(np.float32))
    a, b = one(q), inc(q)
    # eigenvector signs are arbitrary: compare similarities, which are sign-invariant
    np.testing.assert_allclose((a @ a.T).numpy(), (b @ b.T).numpy(), atol=1e-4)
    # before normalisation the projection has unit variance per component (that is whitening)
    proj = (torch.from_numpy(x).float() - one.mean) @ one.projection
    np.testing.assert_allclose(proj.double().var(0).numpy(), 1.0, rtol=1e-2)
    np.testing.assert_allclose(torch.linalg.norm(a, dim=-1).numpy(), 1.0, atol=1e-5)


def test_save_load_roundtrip_keeps_identity(tmp_path: Path) -> None:
    x = _data(1)
    white = PCAWhitening(dims=6).fit(x)
    q = torch.from_numpy(x[:20].astype(np.float32))
    for name in ("w.npz", "w.safetensors"):
        path = white.save(tmp_path / name)
        back = PCAWhitening.from_file(path)
        assert back.dims == 6 and back.input_dims == x.shape[1]
        assert back.identity == white.identity
        assert back.identity.startswith("pca6-")
        np.testing.assert_allclose(back(q).numpy(), white(q).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="unsupported suffix"):
        white.save(tmp_path / "w.pkl")


def test_fit_errors() -> None:
    with pytest.raises(ValueError, match="no vectors"):
        PCAWhitening(dims=4).finalize()
    with pytest.raises(ValueError, match="only 4 vectors"):
        PCAWhitening(dims=4).fit(np.random.rand(4, 10))
    w = PCAWhitening(dims=2).partial_fit(np.random.rand(10, 5))
    with pytest.raises(ValueError, match="6-d vectors"):
        w.partial_fit(np.random.rand(10, 6))
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAWhitening(dims=2)(torch.rand(3, 5))
    with pytest.raises(ValueError, match="all of mean, V and d"):
        PCAWhitening(np.zeros(3), None, None)
    fitted = PCAWhitening(dims=2).fit(np.random.rand(50, 5))
    with pytest.raises(ValueError, match=r"\[\.\.\., 5\]"):
        fitted(torch.rand(3, 6))


def test_apply_is_forward_without_autograd_for_numpy_and_torch() -> None:
    """PCAWhitening.apply, the one way outside torch code: numpy or torch in, float32 numpy out, as forward."""
    import numpy as np
    import torch

    from dnsvr.backbones import PCAWhitening

    rng = np.random.default_rng(3)
    white = PCAWhitening(dims=8).fit(rng.standard_normal((200, 16)))
    x = rng.standard_normal((5, 9, 16))
    want = white(torch.from_numpy(x.astype(np.float32))).detach().numpy()
    for given in (x, x.astype(np.float16), torch.from_numpy(x), torch.from_numpy(x.astype(np.float32))):
        got = white.apply(given)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (5, 9, 8)
        np.testing.assert_allclose(got, want, atol=1e-3 if getattr(given, "dtype", None) in (np.float16,) else 1e-6)
