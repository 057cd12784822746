"""Iterative Quantization (ITQ) projection that initialises the binarization student.

The binarization layer of S^f_B computes ``sign(normalize(x) @ W)`` with ``W``
``[dims, bits]``. DnS initialises ``W`` with an ITQ projection (Gong & Lazebnik,
2011) fitted on region vectors of the training collection: the top ``bits``
principal directions ``V`` followed by the orthogonal rotation ``R`` that
minimises the quantisation loss ``||B - X V R||²`` over ``B ∈ {-1, 1}``; ``W = V R``.
The layer does not centre its input, so the PCA here is uncentred too (PCA-whitened
region vectors are close to zero-mean anyway).

Projections are stored as ``.npz`` with key ``proj`` (the reference's ``itq.npz`` layout).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dnsvr.features import FeatureFile

logger = logging.getLogger(__name__)


def sample_regions(features: str | Path, max_vectors: int = 200_000, seed: int = 0) -> np.ndarray:
    """Region vectors ``[n, D]`` (L2-normalised) sampled uniformly from a feature file.

    Raises:
        ValueError: when the file holds no videos.
    """
    rng = np.random.default_rng(seed)
    with FeatureFile(features) as ff:
        ids = ff.ids()
        if not ids:
            raise ValueError(f"{features}: no videos to fit ITQ on")
        total = sum(int(np.prod(ff.shape(v)[:2])) for v in ids)
        keep = min(1.0, max_vectors / max(total, 1))
        chunks = []
        for _, x in ff.iter(ids):
            x = x.reshape(-1, x.shape[-1])
            if keep < 1.0:
                x = x[rng.random(len(x)) < keep]
            chunks.append(x)
    x = np.concatenate(chunks).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_itq(x: np.ndarray, bits: int | None = None, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Fit an ITQ projection.

    Args:
        x: ``[n, D]`` training vectors (L2-normalised region vectors).
        bits: code length (≤ D; default D).
        iterations: alternating optimisation rounds.
        seed: seeds the initial random rotation.

    Returns:
        ``W`` float32 ``[D, bits]`` with orthonormal columns.

    Raises:
        ValueError: when ``bits`` exceeds the dimensionality or too few vectors are given.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    bits = d if bits is None else int(bits)
    if not 0 < bits <= d:
        raise ValueError(f"ITQ: bits must be in 1..{d} for {d}-d vectors, got {bits}")
    if n < bits:
        raise ValueError(f"ITQ: need at least {bits} vectors to fit {bits} bits, got {n}")
    cov = x.T @ x / n
    evals, evecs = np.linalg.eigh(cov)
    v = evecs[:, np.argsort(evals)[::-1][:bits]]
    z = x @ v
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        b = np.sign(z @ r)
        b[b == 0] = 1
        u, _, wt = np.linalg.svd(z.T @ b)
        r = u @ wt
    loss = float(np.mean((np.sign(z @ r) - z @ r) ** 2))
    logger.info("ITQ: %d vectors, %d→%d bits, quantisation loss %.4f", n, d, bits, loss)
    return (v @ r).astype(np.float32)


def save_itq(path: str | Path, proj: np.ndarray) -> Path:
    """Write ``{"proj": W}`` as ``.npz`` (no pickle)."""
    path = Path(path)
    np.savez(path, proj=np.asarray(proj, dtype=np.float32))
    return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")


def load_itq(path: str | Path) -> np.ndarray:
    """Read a projection: our ``.npz`` (:func:`save_itq`), the reference's ``itq.npz``, or the published
    ``.pth`` (``{"proj": W}``, read with ``weights_only=True`` through :func:`dnsvr.weights.load_checkpoint`).

    Raises:
        ValueError: when the file has no ``proj`` array.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            proj = z["proj"] if "proj" in z else None
    else:
        from dnsvr.weights import load_checkpoint

        state = load_checkpoint(path)
        keys = sorted(state)
        proj = state["proj"].numpy() if "proj" in state else None
    if proj is None:
        raise ValueError(f"{path}: no 'proj' array (keys {keys})")
    return np.asarray(proj, dtype=np.float32)


def published_itq(offline: bool | None = None) -> np.ndarray:
    """The published ITQ projection (ResNet-50 features, DnS-100K), via :mod:`dnsvr.weights`."""
    from dnsvr.weights import resolve_weights

    return load_itq(resolve_weights("itq_resnet50W_dns100k_1M", offline=offline))
