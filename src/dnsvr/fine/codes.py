"""Stored fine representations as the engine reads them: S^f_B's packed bit codes, int8 quantisation, views.

:func:`pack_codes` / :func:`unpack_codes` convert S^f_B's ±1 codes to and from packed bits;
:func:`quantize_rows` (one scale per row) and :func:`_quantize_frames` (one scale per frame) are the
int8 quantisation of ``precision="int8"``; :class:`_Prepared` views a stored representation without
converting it, and fills a block buffer from it in one pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .params import MIN_FRAMES

# ±1 int8 value of every bit of every byte (big-endian bit order, as np.packbits writes).
_BIT_LUT = torch.from_numpy(
    (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int8) * 2 - 1))
# the same 8 codes of a byte read as one int64: one 8-byte gather per byte from a 2 KiB table
_BIT_LUT64 = torch.from_numpy(np.ascontiguousarray(_BIT_LUT.numpy()).view(np.int64).reshape(256))


@dataclass
class _Prepared:
    """A stored representation, viewed (not converted): ``raw`` [T, R, D or D/8] in its stored dtype.

    ``frames`` counts the zero frames appended to videos shorter than 4 frames (learned comparator);
    :meth:`fill` converts straight into a block's buffer (float16 → float32, packed bits → ±1 int8),
    so a block of candidates costs one pass over their bytes.
    """

    raw: torch.Tensor
    frames: int
    regions: int
    dims: int
    fine_type: str

    @property
    def rows(self) -> int:
        return self.frames * self.regions

    def fill(self, dst: torch.Tensor) -> None:
        """Write the ``[rows, dims]`` matrix into ``dst`` (contiguous, float32 or int8)."""
        n = self.raw.shape[0] * self.regions
        if n < dst.shape[0]:
            dst[n:].zero_()
        part = dst[:n]
        if self.fine_type == "bin" and self.raw.dtype == torch.uint8:
            idx = self.raw.reshape(-1).int()
            torch.index_select(_BIT_LUT64, 0, idx, out=part.view(-1).view(torch.int64))
        elif self.fine_type == "bin":
            part.copy_(torch.where(self.raw > 0, 1, -1).reshape(n, self.dims))
        else:
            part.copy_(self.raw.reshape(n, self.dims))

    def part(self, f0: int, f1: int) -> _Prepared:
        """Frames ``f0:f1`` (a view; only for videos that need no padding frames)."""
        return _Prepared(self.raw[f0:f1], f1 - f0, self.regions, self.dims, self.fine_type)

    def matrix(self) -> torch.Tensor:
        """A fresh ``[rows, dims]`` matrix (float32, or int8 for codes)."""
        out = torch.empty((self.rows, self.dims), dtype=torch.int8 if self.fine_type == "bin" else torch.float32)
        self.fill(out)
        return out


def unpack_codes(packed: np.ndarray | torch.Tensor) -> torch.Tensor:
    """±1 int8 codes from S^f_B's packed bits.

    Args:
        packed: uint8 ``[..., D/8]`` (bit 1 = +1, bit 0 = −1; big-endian within a byte).

    Returns:
        int8 ``[..., D]`` of ±1.
    """
    t = torch.as_tensor(np.ascontiguousarray(packed))
    if t.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {t.dtype} shape {tuple(t.shape)}")
    codes = torch.index_select(_BIT_LUT64, 0, t.reshape(-1).int()).view(torch.int8)
    return codes.reshape(*t.shape[:-1], t.shape[-1] * 8)


def pack_codes(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """Packed bits from ±1 (or sign-valued) codes ``[..., D]`` → uint8 ``[..., D/8]`` (bit = code > 0)."""
    arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.shape[-1] % 8:
        raise ValueError(f"code length must be a multiple of 8, got shape {arr.shape}")
    return np.packbits(arr > 0, axis=-1)


def _prepare(video: np.ndarray | torch.Tensor, fine_type: str) -> _Prepared:
    """View one stored representation (no copy); note the padding of videos shorter than 4 frames."""
    return _prepare_many([video], fine_type)[0]


def _prepare_many(videos: Sequence[np.ndarray | torch.Tensor], fine_type: str) -> list[_Prepared]:
    """:func:`_prepare` for many videos (one warnings filter for all: it costs more than the views)."""
    out = []
    with warnings.catch_warnings():
        # memory-mapped shards are read-only; nothing here writes to the input
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for video in videos:
            if isinstance(video, torch.Tensor):
                t = video.detach().cpu()
            else:
                t = torch.from_numpy(np.ascontiguousarray(video))
            if t.ndim != 3:
                raise ValueError(f"a fine representation must be [T, regions, D], got shape {tuple(t.shape)}")
            dims = t.shape[2] * 8 if (fine_type == "bin" and t.dtype == torch.uint8) else t.shape[2]
            frames = t.shape[0]
            if frames < MIN_FRAMES and fine_type != "chamfer":
                frames = MIN_FRAMES
            out.append(_Prepared(t, frames, int(t.shape[1]), int(dims), fine_type))
    return out


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation: ``x ≈ q * scale[:, None]``.

    Args:
        x: float ``[rows, D]``.

    Returns:
        ``(q int8 [rows, D], scale float32 [rows])`` with ``scale = max|x_row| / 127`` (0 for a zero row).
    """
    x = x.float()
    peak = x.abs().amax(1)
    inv = torch.where(peak > 0, 127.0 / peak.clamp_min(1e-30), 0.0)
    return (x * inv[:, None]).round_().to(torch.int8), peak / 127.0


def _quantize_frames(x: torch.Tensor, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one scale per frame (``regions`` consecutive rows).

    Args:
        x: float32 ``[frames·regions, D]`` (overwritten).
        regions: rows per frame.

    Returns:
        ``(q int8 [frames·regions, D], scale float32 [frames])``, ``x ≈ q * scale`` of its frame,
        ``scale = max|x_frame| / 127`` (0 for an all-zero frame, e.g. padding).
    """
    frames = x.view(x.shape[0] // regions, -1)
    peak = torch.maximum(frames.amax(1), frames.amin(1).neg_())
    inv = torch.where(peak > 0, 127.0 / peak.clamp_min(1e-30), 0.0)
    frames.mul_(inv[:, None]).round_()
    return x.to(torch.int8), peak / 127.0
