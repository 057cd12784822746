"""Layers of the DnS / ViSiL networks, with the published parameter names.

* :class:`Attention` — region attention: the DnS gated form (``transform`` + ``context_vector``, sigmoid) and
  ViSiL's L2-constrained form (``context_vector`` only, weights ``u·x / 2 + 0.5``).
* :class:`BinarizationLayer` — the S^f_B projection ``W`` to ±1 codes (erf relaxation while training).
* :class:`NetVLAD` — soft-assignment VLAD pooling with a linear reduction and LayerNorm (S^c).
* :class:`VideoComparator` — the small CNN over a frame-to-frame similarity matrix, with mask support.
* :class:`SimilarityRegularizationLoss` — the penalty on comparator outputs outside [-1, 1].
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "Attention",
    "BinarizationLayer",
    "NetVLAD",
    "VideoComparator",
    "VideoComperator",
    "SimilarityRegularizationLoss",
]


class Attention(nn.Module):
    """Region attention weighting ``x → x · w(x)``.

    Args:
        dims: region vector size.
        norm: ``False`` — DnS form ``w = sigmoid(c · tanh(W x + b))`` (parameters ``transform``,
            ``context_vector``); ``True`` — ViSiL's L2-constrained form ``w = (c · x) / 2 + 0.5`` with
            ``‖c‖ = 1`` (parameter ``context_vector`` only), so that ``w ∈ [0, 1]`` for unit-norm ``x``.
    """

    def __init__(self, dims: int, norm: bool = False) -> None:
        super().__init__()
        self.norm = norm
        if not norm:
            self.transform = nn.Linear(dims, dims)
        self.context_vector = nn.Linear(dims, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.norm:
            nn.init.normal_(self.context_vector.weight)
            self.apply_constraint()
        else:
            nn.init.xavier_uniform_(self.context_vector.weight)
            nn.init.xavier_uniform_(self.transform.weight)
            nn.init.zeros_(self.transform.bias)

    @torch.no_grad()
    def apply_constraint(self) -> None:
        """Re-project the context vector onto the unit sphere (L2-constrained form only; call after a step)."""
        if self.norm:
            w = self.context_vector.weight
            w.copy_(F.normalize(w, p=2, dim=-1, eps=1e-6))

    apply_contraint = apply_constraint  # the reference's spelling, for code ported unchanged

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(x * weights, weights)`` with weights of shape ``[..., 1]``."""
        if self.norm:
            weights = self.context_vector(x) / 2.0 + 0.5
        else:
            weights = torch.sigmoid(self.context_vector(torch.tanh(self.transform(x))))
        return x * weights, weights


class BinarizationLayer(nn.Module):
    """Projection to binary codes: ``sign(normalize(x) @ W)`` at eval time, ``erf(· / sqrt(2σ))`` in training.

    Args:
        dims: input size.
        bits: code length (default ``dims``).
        sigma: variance of the erf relaxation used while training.
        init: ``"orthogonal"`` (random rotation, the default: no download at construction) or ``"uniform"``
            (the reference's non-ITQ init). Load the published ITQ initialisation with
            :meth:`load_itq` (registry name ``itq_resnet50W_dns100k_1M``).
    """

    def __init__(self, dims: int, bits: int | None = None, sigma: float = 1e-6, init: str = "orthogonal") -> None:
        super().__init__()
        bits = dims if bits is None else bits
        self.sigma = sigma
        self.W = nn.Parameter(torch.empty(dims, bits))
        if init == "orthogonal":
            nn.init.orthogonal_(self.W)
        elif init == "uniform":
            nn.init.uniform_(self.W)
        else:
            raise ValueError(f"unknown BinarizationLayer init {init!r}; choose 'orthogonal' or 'uniform'")

    @torch.no_grad()
    def load_itq(self, path: str | None = None) -> None:
        """Initialise ``W`` from the published ITQ rotation (``{"proj": [512, 512]}``) via the weights registry.

        Raises:
            ValueError: the file's projection does not have ``W``'s shape.
            dnsvr.weights.WeightsUnavailableError: offline and not cached.
        """
        from dnsvr.weights import load_checkpoint, resolve_weights

        file = resolve_weights("itq_resnet50W_dns100k_1M", path=path)
        state = load_checkpoint(file)
        if "proj" not in state:
            raise ValueError(f"{file}: no 'proj' entry (keys: {sorted(state)})")
        proj = state["proj"]
        if tuple(proj.shape) != tuple(self.W.shape):
            raise ValueError(f"{file}: ITQ projection {tuple(proj.shape)} does not match W {tuple(self.W.shape)}")
        self.W.copy_(proj.to(self.W))

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(x, p=2, dim=-1) @ self.W
        if self.training:
            # erf is exactly ±1 in float32 beyond |z| ≈ 4; clamping at 6 keeps every output and the
            # in-range gradients, but turns the underflowing (denormal) gradients outside into exact
            # zeros — denormals slow the CPU matmul of the backward pass about 100-fold.
            return torch.erf((x / math.sqrt(2 * self.sigma)).clamp(-6.0, 6.0))
        return torch.sign(x)

    def extra_repr(self) -> str:
        return f"dims={self.W.shape[0]}, bits={self.W.shape[1]}, sigma={self.sigma}"


class NetVLAD(nn.Module):
    """NetVLAD pooling of a set of vectors, with optional linear reduction and a final LayerNorm.

    Args:
        dims: input vector size C.
        num_clusters: K.
        outdims: size of the reduced output (``reduction_layer``: K·C → outdims, no bias); None keeps K·C.
    """

    def __init__(self, dims: int, num_clusters: int, outdims: int | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.num_clusters = num_clusters
        self.centroids = nn.Parameter(torch.randn(num_clusters, dims) / math.sqrt(dims))
        self.conv = nn.Conv2d(dims, num_clusters, kernel_size=1, bias=False)
        if outdims is not None:
            self.outdims = outdims
            self.reduction_layer = nn.Linear(num_clusters * dims, outdims, bias=False)
        else:
            self.outdims = num_clusters * dims
        self.norm = nn.LayerNorm(self.outdims)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.conv.weight.copy_(self.centroids.detach().view(self.num_clusters, self.dims, 1, 1))
        if hasattr(self, "reduction_layer"):
            nn.init.normal_(self.reduction_layer.weight, std=1 / math.sqrt(self.num_clusters * self.dims))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``x`` [N, C, T, R] (mask [N, T], 1 = valid) into [N, outdims]."""
        n, c, t, r = x.shape
        if c != self.dims:
            raise ValueError(f"NetVLAD expects {self.dims} channels; got input of shape {tuple(x.shape)}")
        assign = F.softmax(self.conv(x).view(n, self.num_clusters, t * r), dim=1)  # [N, K, T·R]
        if mask is not None:
            assign = assign * mask.to(x.dtype).unsqueeze(-1).expand(n, t, r).reshape(n, 1, t * r)
        feats = x.reshape(n, c, t * r)
        # Σ_t a_k(t) (x_t − c_k) = Σ_t a_k(t) x_t − (Σ_t a_k(t)) c_k
        vlad = torch.bmm(assign, feats.transpose(1, 2)) - assign.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, p=2, dim=2)  # intra-normalisation
        vlad = F.normalize(vlad.reshape(n, -1), p=2, dim=1)
        if hasattr(self, "reduction_layer"):
            vlad = self.reduction_layer(vlad)
        return self.norm(vlad)


class VideoComparator(nn.Module):
    """The CNN over frame-to-frame similarity matrices (conv 3×3 ×32 → pool → ×64 → pool → ×128 → 1×1 conv).

    Args:
        padding: ``"zero"`` (DnS students and selector; masks supported) or ``"replicate"`` (the ViSiL teacher).

    ``forward(sim [N, T1, T2], mask [N, T1, T2] | None)`` returns ``(out [N, T1//4, T2//4], pooled mask | None)``.
    Masked positions are zeroed after each 3×3 convolution, as in the reference; the final 1×1 convolution is
    not masked (its bias reaches padded positions, which the masked Chamfer later ignores).
    """

    def __init__(self, padding: str = "zero", in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        if padding not in ("zero", "replicate"):
            raise ValueError(f"unknown VideoComparator padding {padding!r}; choose 'zero' or 'replicate'")
        self.padding = padding
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.fconv = nn.Conv2d(128, out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x, (1, 1, 1, 1), mode="constant" if self.padding == "zero" else "replicate")

    def forward(self, sim_matrix: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if sim_matrix.ndim == 3:
            sim_matrix = sim_matrix.unsqueeze(1)
        elif sim_matrix.ndim != 4:
            raise ValueError(f"VideoComparator input must be [N, T1, T2] or [N, 1, T1, T2]; "
                             f"got {tuple(sim_matrix.shape)}")
        if mask is not None:
            if tuple(mask.shape[-2:]) != tuple(sim_matrix.shape[-2:]):
                raise ValueError(f"mask {tuple(mask.shape)} does not match similarity matrix "
                                 f"{tuple(sim_matrix.shape)} in the last two dimensions")
            mask = mask.to(sim_matrix.dtype)
            if mask.ndim == 3:
                mask = mask.unsqueeze(1)
        x = sim_matrix
        for i, conv in enumerate((self.conv1, self.conv2, self.conv3)):
            x = conv(self._pad(x))
            if mask is not None:
                x = x.masked_fill(mask == 0, 0.0)
            x = F.relu(x)
            if i < 2:
                x = F.max_pool2d(x, 2, 2)
                if mask is not None:
                    mask = F.max_pool2d(mask, 2, 2)
        x = self.fconv(x)
        return x.squeeze(1), (mask.squeeze(1) if mask is not None else None)


VideoComperator = VideoComparator  # the reference's spelling


class SimilarityRegularizationLoss(nn.Module):
    """Sum of the amounts by which similarities fall outside ``[min_val, max_val]`` (DnS's regulariser)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        super().__init__()
        self.min_val = min_val
        self.max_val = max_val

    def forward(self, sim: Tensor) -> Tensor:
        loss = torch.sum(torch.abs(torch.clamp(sim - self.min_val, max=0.0)))
        return loss + torch.sum(torch.abs(torch.clamp(sim - self.max_val, min=0.0)))
