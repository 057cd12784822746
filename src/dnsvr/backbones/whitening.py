"""PCA whitening of region vectors (the published {mean, V, d} layout, or fitted on your own features).

The paper profile reduces ResNet-50's 3840-d L3-iMAC regions to 512 dimensions
with the PCA published with ViSiL (``pca_resnet50_vcdb_1M.pth``: a dict with
``mean`` [C], ``V`` [C, C] eigenvectors in columns and ``d`` [C] eigenvalues).
The transform keeps the ``dims`` eigenvectors with the largest eigenvalues,
projects the centred vector onto them, divides by ``sqrt(d + 1e-7)`` and
L2-normalises the result.

The lite profile fits the same transform on the user's own region vectors,
incrementally (``partial_fit`` over batches, then ``finalize``), with the mean
and covariance accumulated in float64.

Example:
    >>> w = PCAWhitening(dims=8)
    >>> for batch in batches:                              # doctest: +SKIP
    ...     w.partial_fit(batch)                           # [..., C] region vectors
    >>> w.finalize()                                       # doctest: +SKIP
    >>> w(x).shape                                         # doctest: +SKIP
    torch.Size([..., 8])
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: Added to the eigenvalues before the inverse square root (the reference's value).
EPS = 1e-7

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")


def map_whitened(features: ArrayLike, matrix: ArrayLike | None) -> np.ndarray:
    """``normalise(features @ matrix)`` in float32 — whitened features carried into a whitening that
    follows theirs (:meth:`PCAWhitening.relative_to` gives the matrix); unchanged without a matrix."""
    x = np.asarray(features, dtype=np.float32)
    if matrix is None:
        return x
    y = x @ np.asarray(matrix, dtype=np.float32)
    return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


class PCAWhitening(nn.Module):
    """PCA whitening: centre, project onto the top ``dims`` eigenvectors, scale by 1/sqrt(d + 1e-7), L2-normalise.

    Built either fitted, from the published layout (``PCAWhitening(mean, V, d, dims=512)``,
    :meth:`from_file`), or empty (``PCAWhitening(dims=512)``) and then fitted with
    :meth:`fit` or :meth:`partial_fit` + :meth:`finalize`.

    Args:
        mean: [C] mean of the training vectors.
        V: [C, K] eigenvectors in columns (K ≥ dims; the published file has K = C).
        d: [K] eigenvalues matching the columns of ``V`` (any order).
        dims: output size; the ``dims`` columns of ``V`` with the largest ``d`` are kept.

    Raises:
        ValueError: on inconsistent shapes, or when ``dims`` exceeds the available components.
    """

    def __init__(
        self,
        mean: ArrayLike | None = None,
        V: ArrayLike | None = None,  # noqa: N803 (the published name)
        d: ArrayLike | None = None,
        dims: int = 512,
    ) -> None:
        super().__init__()
        if dims < 1:
            raise ValueError(f"dims must be positive, got {dims}")
        self.dims = int(dims)
        self.register_buffer("mean", torch.empty(0), persistent=False)
        self.register_buffer("projection", torch.empty(0, 0), persistent=False)
        self._eigenvalues: np.ndarray | None = None
        self._components: np.ndarray | None = None
        self._mean64: np.ndarray | None = None
        # incremental-fit state (float64): sample count, running mean, scatter matrix about the mean
        self._count = 0
        self._acc_mean: np.ndarray | None = None
        self._acc_scatter: np.ndarray | None = None
        given = [x is not None for x in (mean, V, d)]
        if any(given) and not all(given):
            raise ValueError("PCAWhitening needs all of mean, V and d (or none, to fit it later)")
        if all(given):
            self._set(_to_numpy(mean, "mean"), _to_numpy(V, "V"), _to_numpy(d, "d"))

    # -- construction -----------------------------------------------------------------------------
    def _set(self, mean: np.ndarray, V: np.ndarray, d: np.ndarray) -> None:  # noqa: N803
        mean = np.asarray(mean).reshape(-1)
        d = np.asarray(d).reshape(-1)
        if V.ndim != 2 or V.shape[0] != mean.shape[0] or V.shape[1] != d.shape[0]:
            raise ValueError(
                f"whitening shapes disagree: mean {tuple(mean.shape)}, V {tuple(V.shape)}, d {tuple(d.shape)} "
                "(expected mean [C], V [C, K], d [K])"
            )
        if self.dims > d.shape[0]:
            raise ValueError(f"whitening has {d.shape[0]} components; cannot keep dims={self.dims}")
        # stable descending order, as the reference's argsort(d)[::-1] up to ties
        idx = np.argsort(-d.astype(np.float64), kind="stable")[: self.dims]
        d_kept = d[idx].astype(np.float64)
        V_kept = V[:, idx].astype(np.float64)  # noqa: N806
        # the reference builds diag(1/sqrt(d+eps)) @ V^T then transposes: column j of V scaled by 1/sqrt(d_j+eps)
        projection = V_kept / np.sqrt(d_kept + EPS)[None, :]
        self._eigenvalues = d_kept
        self._components = V_kept
        self._mean64 = mean.astype(np.float64)
        device = self.mean.device
        self.mean = torch.from_numpy(mean.astype(np.float32)).to(device)
        self.projection = torch.from_numpy(projection.astype(np.float32)).to(device)

    @classmethod
    def from_file(cls, path: str | Path, dims: int | None = None) -> PCAWhitening:
        """Load a whitening file: the published ``.pth`` ({mean, V, d}), ``.npz``, or our ``.safetensors``.

        Args:
            path: the file. ``.pth``/``.pt`` is read with ``torch.load(weights_only=True)``
                (:func:`dnsvr.weights.load_checkpoint`),
                ``.npz`` with ``allow_pickle=False``, ``.safetensors`` with safetensors.
            dims: output size; default: 512 when the file has at least 512 components,
                else the number stored (our own saves record theirs).

        Returns:
            The fitted whitening.

        Raises:
            FileNotFoundError: if the file is missing.
            ValueError: if the file lacks ``mean``/``V``/``d`` or the shapes disagree.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"whitening file not found: {path}")
        suffix = path.suffix.lower()
        meta: dict[str, str] = {}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if "dims" in arrays:
                meta["dims"] = str(int(arrays.pop("dims")))
        elif suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as f:
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
                meta = dict(f.metadata() or {})
        else:
            from dnsvr.weights import load_checkpoint  # weights_only=True, the project's one .pth reader

            arrays = {k: _to_numpy(v, k) for k, v in load_checkpoint(path).items()}
        missing = [k for k in ("mean", "V", "d") if k not in arrays]
        if missing:
            raise ValueError(f"{path}: whitening file lacks {missing}; has {sorted(arrays)}")
        if dims is None:
            stored = int(meta.get("dims", 0)) or (512 if np.asarray(arrays["d"]).size >= 512 else 0)
            dims = stored or int(np.asarray(arrays["d"]).size)
        white = cls(arrays["mean"], arrays["V"], arrays["d"], dims=dims)
        logger.info("loaded whitening %s from %s", white.identity, path)
        return white

    # -- fitting ----------------------------------------------------------------------------------
    def partial_fit(self, x: ArrayLike) -> PCAWhitening:
        """Accumulate region vectors for fitting (mean and scatter in float64, batch-merged).

        Args:
            x: [..., C] vectors (e.g. [T, 9, C] region features of one video).

        Returns:
            self.

        Raises:
            ValueError: if the feature size differs from earlier batches.
        """
        arr = _to_numpy(x, "x")
        if arr.ndim < 1:
            raise ValueError("partial_fit needs [..., C] vectors, got a scalar")
        arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
        n = arr.shape[0]
        if n == 0:
            return self
        if self._acc_mean is not None and self._acc_mean.shape[0] != arr.shape[1]:
            raise ValueError(f"partial_fit: got {arr.shape[1]}-d vectors, earlier batches were {self._acc_mean.shape[0]}-d")
        batch_mean = arr.mean(axis=0)
        centred = arr - batch_mean
        batch_scatter = centred.T @ centred
        if self._acc_mean is None:
            self._count, self._acc_mean, self._acc_scatter = n, batch_mean, batch_scatter
        else:
            total = self._count + n
            delta = batch_mean - self._acc_mean
            self._acc_scatter = self._acc_scatter + batch_scatter + np.outer(delta, delta) * (self._count * n / total)
            self._acc_mean = self._acc_mean + delta * (n / total)
            self._count = total
        return self

    def finalize(self) -> PCAWhitening:
        """Compute the whitening from the accumulated vectors (eigendecomposition of the covariance).

        Returns:
            self, fitted; the accumulators are released.

        Raises:
            ValueError: if nothing was accumulated, or there are too few vectors for ``dims``
                whitened components (whitening a rank-deficient covariance amplifies noise).
        """
        if self._acc_mean is None or self._acc_scatter is None:
            raise ValueError("finalize: no vectors were given to partial_fit")
        n, c = self._count, self._acc_mean.shape[0]
        if self.dims > c:
            raise ValueError(f"cannot keep dims={self.dims} components of {c}-d vectors")
        if n - 1 < self.dims:
            raise ValueError(
                f"only {n} vectors for dims={self.dims}: need more than dims vectors "
                "(extract more frames/videos or choose a smaller dims)"
            )
        cov = self._acc_scatter / (n - 1)
        d, V = np.linalg.eigh(cov)  # noqa: N806 (ascending)
        d = np.clip(d, 0.0, None)
        # stored as float32 (as saved files are), so a reloaded whitening has the same identity
        self._set(self._acc_mean.astype(np.float32), V.astype(np.float32), d.astype(np.float32))
        logger.info("fitted whitening %s on %d vectors of %d dims", self.identity, n, c)
        self._count, self._acc_mean, self._acc_scatter = 0, None, None
        return self

    def fit(self, x: ArrayLike) -> PCAWhitening:
        """Fit on one array of vectors [..., C] (``partial_fit(x).finalize()``)."""
        return self.partial_fit(x).finalize()

    # -- use --------------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether the transform is available."""
        return self._components is not None

    @property
    def input_dims(self) -> int:
        """Size C of the vectors the whitening takes."""
        self._require_fitted()
        return int(self.mean.shape[0])

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("PCAWhitening is not fitted: load it (from_file) or call fit / partial_fit + finalize")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten vectors.

        Args:
            x: [..., C] tensor (any float dtype; computed in float32). Not modified in place.

        Returns:
            [..., dims] float32, L2-normalised.

        Raises:
            ValueError: if the last dimension is not C.
            RuntimeError: if not fitted.
        """
        self._require_fitted()
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"whitening expects [..., {self.mean.shape[0]}] vectors, got {tuple(x.shape)}")
        y = torch.matmul(x.float() - self.mean, self.projection)
        return F.normalize(y, p=2, dim=-1)

    def apply(self, features: ArrayLike) -> np.ndarray:
        """Whiten features outside torch code: ``[..., C]`` (numpy or torch, any float dtype) → float32 numpy
        ``[..., dims]``, L2-normalised (:meth:`forward` without autograd). The one way extraction, bundles and
        feature files apply a whitening.

        Raises:
            ValueError: if the last dimension is not C.
            RuntimeError: if not fitted.
        """
        if isinstance(features, torch.Tensor):
            x = features.detach().cpu()
        else:
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        with torch.inference_mode():
            return self(x.float()).numpy()

    def followed_by(self, matrix: ArrayLike) -> PCAWhitening:
        """This whitening followed by a linear map of its output, as one whitening.

        ``followed_by(P)`` whitens ``x`` as ``normalise(normalise((x − mean) @ projection) @ P)`` would:
        the inner normalisation only scales a vector, so the two maps fold into one projection
        ``projection @ P`` (stored as ``V = projection @ P``, ``d = 1``, in the usual file layout).

        Args:
            matrix: ``[dims, K]`` (e.g. a learned whitening fitted on this whitening's output).

        Returns:
            A new fitted :class:`PCAWhitening` of ``K`` dims.
        """
        self._require_fitted()
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != self.dims:
            raise ValueError(f"a map of this whitening's output must be [{self.dims}, K], got {tuple(m.shape)}")
        folded = self.projection.detach().cpu().numpy().astype(np.float64) @ m
        return PCAWhitening(self.mean.detach().cpu().numpy().astype(np.float32), folded.astype(np.float32),
                            np.full(m.shape[1], 1.0 - EPS, dtype=np.float32), dims=m.shape[1])

    def relative_to(self, base: PCAWhitening, tolerance: float = 1e-3) -> np.ndarray | None:
        """The linear map ``P`` with ``self`` = ``base.followed_by(P)``, or None when there is none.

        It lets features stored whitened by ``base`` be whitened by ``self`` without the raw
        features: ``normalise(stored @ P)``.

        Args:
            base: the other whitening.
            tolerance: largest relative residual of the least-squares fit of the projections.
        """
        self._require_fitted()
        base._require_fitted()
        if self.mean.shape != base.mean.shape or not torch.allclose(self.mean.cpu(), base.mean.cpu(), atol=1e-6):
            return None
        a = base.projection.detach().cpu().numpy().astype(np.float64)
        b = self.projection.detach().cpu().numpy().astype(np.float64)
        p, *_ = np.linalg.lstsq(a, b, rcond=None)
        if np.linalg.norm(a @ p - b) > tolerance * max(np.linalg.norm(b), 1e-12):
            return None
        return p

    @property
    def identity(self) -> str:
        """Short content hash of the transform (``pca<dims>-<12 hex>``) to record provenance."""
        self._require_fitted()
        h = hashlib.sha256()
        h.update(str(self.dims).encode())
        h.update(self.mean.detach().cpu().numpy().astype("<f4").tobytes())
        h.update(self.projection.detach().cpu().numpy().astype("<f4").tobytes())
        return f"pca{self.dims}-{h.hexdigest()[:12]}"

    def save(self, path: str | Path) -> Path:
        """Save the fitted whitening in the {mean, V, d} layout (kept components only).

        Args:
            path: ``.npz`` or ``.safetensors`` (no pickle).

        Returns:
            The path written.

        Raises:
            ValueError: for another suffix.
            RuntimeError: if not fitted.
        """
        path = Path(path)
        arrays = self._arrays()
        suffix = path.suffix.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".npz":
            np.savez(path, **arrays, dims=np.array(self.dims))
        elif suffix == ".safetensors":
            path.write_bytes(self.to_safetensors())
        else:
            raise ValueError(f"save: unsupported suffix {suffix!r} for {path}; use .npz or .safetensors")
        logger.info("saved whitening %s to %s", self.identity, path)
        return path

    def to_safetensors(self) -> bytes:
        """The fitted whitening as the bytes of a ``.safetensors`` file (what :meth:`save` writes there).

        Raises:
            RuntimeError: if not fitted.
        """
        from safetensors.numpy import save

        meta = {"format": "dnsvr-pca-whitening", "dims": str(self.dims), "identity": self.identity}
        return save(self._arrays(), metadata=meta)

    def _arrays(self) -> dict[str, np.ndarray]:
        """The saved layout {mean, V, d} (kept components only), float32."""
        self._require_fitted()
        return {
            "mean": np.asarray(self._mean64, dtype=np.float32),
            "V": np.ascontiguousarray(np.asarray(self._components, dtype=np.float32)),
            "d": np.asarray(self._eigenvalues, dtype=np.float32),
        }

    def extra_repr(self) -> str:
        if not self.fitted:
            return f"dims={self.dims}, fitted=False, accumulated={self._count}"
        return f"{self.input_dims} -> {self.dims}, identity={self.identity}"

    def config(self) -> dict[str, Any]:
        """JSON-able description (dims, input dims, identity) for manifests."""
        self._require_fitted()
        return {"type": "pca_whitening", "dims": self.dims, "input_dims": self.input_dims, "identity": self.identity}


__all__ = ["PCAWhitening", "EPS"]
