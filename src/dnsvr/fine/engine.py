"""Batched fine-grained similarity: one query against many candidates at once.

The reference networks compare one (query, target) pair per call: a region-level
tensor dot, Chamfer over regions, the video comparator CNN, Chamfer over frames.
Here the same arithmetic runs for a whole block of candidates:

* the query's ``T1·9`` region vectors against every region of a block of
  candidates in **one matrix product** (int8 ``torch._int_mm`` for the ±1 codes of
  S^f_B — exact — float32 otherwise);
* the comparator CNN over **many pairs at once**, candidates bucketed by length and
  zero-padded, with the per-pair valid area re-masked after every layer so that each
  pair's result equals what the network computes for that pair alone (not what the
  reference's padded-batch path computes: its max-pooling of the padding mask lets
  one padded row into odd-length videos);
* where the CPU has AVX-512 VNNI, the compiled stages of ``dnsvr._finekernel``: the region stage
  fused (products, max over a candidate frame's regions and mean over the query's, in registers; S^f_B's
  packed bits read directly; see :func:`kernel_region_chamfer`), and the comparator's conv1 + pooling and
  second pooling, all with the torch engine's results (bit for bit where the arithmetic is integer or a
  max; float sums to float32 rounding, since the BLAS under torch picks its summation order per CPU and
  shape); the torch code below is their fallback and reference;
* **blocks** bounded in elements (the region product is split over query rows and over
  candidates), and **tiles** for long videos: a pair whose working memory would exceed
  ``memory_budget`` (default 256 MB; one pair of hour-long videos needs ~2.5 GB untiled) is
  computed in row strips of its frame-to-frame matrix, the region product in blocks of
  candidate frames and the comparator in tiles with a halo of :data:`HALO` frames, so that
  every tile's kept output is exactly the untiled one (:func:`plan_tiles`, :func:`_long_pair`).

``precision="int8"`` (query-time option; float stages ``att`` and ``chamfer`` only — the
S^f_B codes are always exact) runs the region product in int8 too: every query region
vector is quantised symmetrically on its own (scale ``max|x| / 127``, float32), every
candidate *frame* (its 9 region vectors together) with one such scale, on the fly from
the stored float16 values. One scale per candidate frame, rather than per vector, lets
the max over a frame's regions run on the int32 products; the scales are applied to the
reduced ``[T2, T1·9]`` result, not to the full product. The result approximates the
exact path (errors measured in ``benchmarks/bench_search.py``; bound in the tests).

:func:`fine_similarities` is the entry point; :class:`FineComparator` holds the
comparator weights (from a ``dnsvr.nn`` network or any state dict with the
reference's ``visil_head.*`` names).

Videos shorter than 4 frames cannot pass the reference comparator (its two
pooling layers leave nothing); they are zero-padded to 4 frames here.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from dnsvr.nn._utils import MIN_COMPARATOR_FRAMES

try:
    from dnsvr import _finekernel
except ImportError as _exc:  # not built: the torch engine does the region stage
    _finekernel = None
    _FINEKERNEL_MISSING = f"{_exc}"
else:
    _FINEKERNEL_MISSING = ""

logger = logging.getLogger(__name__)

FineType = Literal["att", "bin", "chamfer"]
FINE_TYPES: tuple[str, ...] = ("att", "bin", "chamfer")
Precision = Literal["exact", "int8"]
#: Region-product precisions: ``exact`` (float32; int8 for S^f_B codes, which is exact) or ``int8``.
PRECISIONS: tuple[str, ...] = ("exact", "int8")
#: The precision used when none is asked for.
DEFAULT_PRECISION = "exact"

#: Default bound on the elements of one block's int8 region product (int32: 4 bytes each): ~3 candidates
#: of 60 frames, whose product and its max over regions stay in cache (blocks of 10 were ~15% slower per
#: pair in the int8 product).
DEFAULT_BLOCK_ELEMENTS = 1_000_000
#: The same bound for float32 region products (no gain from smaller blocks measured there).
FLOAT_BLOCK_ELEMENTS = 3_000_000
#: Default bound on the elements of one comparator batch's first feature map (32 channels × pairs × T1 × T2):
#: ~70 pairs of 60 frames (32 MB; 2–3% faster per pair than ~35 with 2 threads, ~140 was slower).
DEFAULT_CNN_ELEMENTS = 8_000_000
#: Smallest video length the comparator can take (two 2×2 poolings): the networks' own constant.
MIN_FRAMES = MIN_COMPARATOR_FRAMES
#: Default bound on the working memory of one pair (bytes). A pair that would need more (long videos:
#: one pair of hour-long videos needs ~2.5 GB untiled) runs in tiles: the frame-to-frame matrix in row
#: strips, the comparator in tiles with a halo, the region product in blocks of candidate frames.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Input frames of context a comparator tile needs on each side. Output position ``v`` (a quarter of the
#: input resolution, after the two 2×2 poolings) reads input rows ``4v-7 .. 4v+10``; the zero padding at
#: an artificial tile edge corrupts the first 2 and the last 3 output rows of the tile. 8 frames (2 output
#: rows) before and after keeps every output row a tile contributes exact, and keeps tile starts multiples
#: of 4, so that both poolings pair the same rows and columns as the untiled network.
HALO = 8
# peak bytes per comparator input position: the padded input, the 4×4 windows, conv1 at the 4
# pooling phases, the pooled map (float32; the later layers are smaller)
_CNN_BYTES_PER_POSITION = 4 * 48

_COMPARATOR_KEYS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                    "conv3.weight", "conv3.bias", "fconv.weight", "fconv.bias")

# ±1 int8 value of every bit of every byte (big-endian bit order, as np.packbits writes).
_BIT_LUT = torch.from_numpy(
    (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int8) * 2 - 1))
# the same 8 codes of a byte read as one int64: one 8-byte gather per byte from a 2 KiB table
_BIT_LUT64 = torch.from_numpy(np.ascontiguousarray(_BIT_LUT.numpy()).view(np.int64).reshape(256))


def _select_kernel():  # noqa: ANN202  (the extension module, or None)
    """The compiled stages when they are built, this CPU runs them and ``DNSVR_FINE_KERNEL`` is not ``0``."""
    if _finekernel is None:
        logger.debug("dnsvr._finekernel not built (%s): the torch engine runs everything", _FINEKERNEL_MISSING)
        return None
    if os.environ.get("DNSVR_FINE_KERNEL", "1") == "0":
        logger.debug("DNSVR_FINE_KERNEL=0: the torch engine runs everything")
        return None
    if not _finekernel.supported():
        logger.debug("this CPU lacks AVX-512 VNNI: the torch engine runs everything")
        return None
    return _finekernel


#: The compiled stages (``dnsvr._finekernel``: the fused region stage, the comparator's conv1 + pooling and
#: its second pooling) in use, or None (the torch engine runs them).
_KERNEL = _select_kernel()


class FineComparator:
    """The weights of the reference video comparator CNN (``visil_head``), as plain tensors.

    Args:
        state: a state dict holding ``visil_head.conv1.weight`` ... ``visil_head.fconv.bias``
            (the reference's names; a prefix-free ``conv1.weight`` ... also works), or a
            module whose ``state_dict()`` has them (``FineGrainedStudent``, ``VideoComperator``).

    Raises:
        KeyError: if a comparator weight is missing (the message lists the missing names).
    """

    def __init__(self, state: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        found: dict[str, torch.Tensor] = {}
        for key in _COMPARATOR_KEYS:
            for name in (f"visil_head.{key}", key):
                if name in state:
                    found[key] = torch.as_tensor(state[name]).detach().float().contiguous()
                    break
        missing = [k for k in _COMPARATOR_KEYS if k not in found]
        if missing:
            raise KeyError(f"comparator weights missing: {missing} (have {sorted(state)[:12]}...)")
        self.w = found
        # conv1 (one input channel) and the 2×2 max-pooling after it as one matrix product: each
        # pooled position's 4×4 input window (stride 2) against the 3×3 kernel placed at the four
        # pooling phases ([16 → 4·32]), then the max over the phases. Its output is channels-last
        # with no copy; the full-resolution 32-channel map is never pooled in a separate pass.
        self._w1p = _phase_weight(found["conv1.weight"])
        # conv2, conv3 as modules for the fused oneDNN conv + ReLU of dnsvr.backbones
        self._convs = [self._conv_module(found[f"conv{i}.weight"], found[f"conv{i}.bias"]) for i in (2, 3)]

    @staticmethod
    def _conv_module(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Conv2d:
        conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=weight.shape[2] // 2)
        with torch.no_grad():
            conv.weight.data = weight.contiguous(memory_format=torch.channels_last)
            conv.bias.copy_(bias)
        return conv.eval().requires_grad_(False)

    def __call__(self, sim: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Run the comparator over a padded batch of frame-to-frame matrices.

        Args:
            sim: ``[B, T1, W]`` float32, each pair's matrix zero beyond its own width.
            widths: ``[B]`` int64, the valid number of target frames of each pair (≥ 4).

        Returns:
            ``[B, T1 // 4, W // 4]`` the comparator output after hardtanh; positions beyond
            ``widths // 4`` are meaningless (the caller masks them).
        """
        from dnsvr.backbones._layers import fused_conv

        w = self.w
        cols = torch.arange(sim.shape[-1])
        # every pair as wide as the batch: nothing to re-mask (the zero padding of the
        # convolutions is the network's own)
        full = bool((widths == sim.shape[-1]).all())

        def colmask(t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            if full:
                return t
            n = t.shape[-1]
            m = (cols[:n][None, :] < valid[:, None]).to(t.dtype)  # [B, n]
            return t.mul_(m[:, None, None, :])

        # ReLU and 2×2 max-pooling commute (both monotone): conv1 → pool → ReLU (a quarter of the
        # elementwise work), conv2/conv3 + ReLU as one fused oneDNN call (dnsvr.backbones' helper),
        # then pooling; after each pooling, the mask of each pair's valid area (a pooled position
        # inside that area only reads valid positions).
        # channels-last throughout: oneDNN's fast layout for these convolutions, and max-pooling a
        # 32-channel map is ~10x faster in it than in NCHW.
        w1 = widths // 2
        positions = sim.shape[0] * (sim.shape[1] // 2) * (sim.shape[2] // 2)
        channels_ok = self._w1p.shape[1] % 64 == 0  # the C code takes channels in blocks of 16
        if _KERNEL is not None and sim.dtype == torch.float32 and positions >= 2 and channels_ok:
            # the same arithmetic in C (each window times each phase's kernel, fused multiply-adds in the
            # window's order: equal to the matrix product to float32 rounding — bit-identical wherever the BLAS
            # sums in window order too, which depends on the CPU and the shape), the column mask included
            x = _kernel_conv1_pool(sim, self._w1p, w["conv1.bias"], None if full else w1)
        else:
            x = _conv1_pool(sim, self._w1p, w["conv1.bias"])  # [B, 32, H // 2, W // 2], channels-last
            x = colmask(x, w1)
        x = fused_conv(self._convs[0], x, "relu")
        w2 = w1 // 2
        if (_KERNEL is not None and x.dtype == torch.float32 and x.shape[1] % 16 == 0 and min(x.shape[2:]) >= 2
                and x.permute(0, 2, 3, 1).is_contiguous()):
            x = _kernel_max_pool2(x, None if full else w2)  # the same maxima in C, the mask included
        else:
            x = colmask(_max_pool2(x), w2)
        x = fused_conv(self._convs[1], x, "relu")
        x = F.conv2d(x, w["fconv.weight"], w["fconv.bias"])
        return F.hardtanh(x.squeeze(1))


def _phase_weight(w1: torch.Tensor) -> torch.Tensor:
    """conv1's ``[C, 1, 3, 3]`` kernel placed at the 4 phases of a 2×2 pooling window: ``[16, 4·C]``.

    Column block ``p`` (phase ``(dy, dx)``, row-major) holds the kernel at offset ``(dy, dx)`` of
    a 4×4 window, so that a window times block ``p`` is conv1 at that phase of the pooled position.
    """
    c = w1.shape[0]
    out = torch.zeros(4, 4, 4, c)  # window row, window column, phase, channel
    for phase, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy:dy + 3, dx:dx + 3, phase, :] = w1[:, 0].permute(1, 2, 0)
    return out.reshape(16, 4 * c).contiguous()


def _conv1_pool(sim: torch.Tensor, w_phase: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(sim, w1, b1, padding=1), 2))`` of ``[B, H, W]``, channels-last ``[B, C, H//2, W//2]``.

    The pooled position ``(i, j)`` reads the input window rows ``2i-1 .. 2i+2`` and columns
    ``2j-1 .. 2j+2`` (zero outside): a strided view of the zero-padded input gathered once into a
    ``[positions, 16]`` matrix, times :func:`_phase_weight`, max over the 4 phases. The bias and the
    ReLU come after the max (both are monotone, so they commute with it exactly).
    """
    b, h, w = sim.shape
    ho, wo = h // 2, w // 2
    c = w_phase.shape[1] // 4
    xp = F.pad(sim, (1, 2 * wo + 1 - w, 1, 2 * ho + 1 - h))  # [B, 2·ho + 2, 2·wo + 2]
    s0, s1, _ = xp.stride()
    windows = xp.as_strided((b, ho, wo, 4, 4), (s0, 2 * s1, 2, s1, 1)).reshape(b * ho * wo, 16)
    y = torch.mm(windows, w_phase).view(b * ho * wo, 4, c).amax(1)
    return y.add_(bias).relu_().view(b, ho, wo, c).permute(0, 3, 1, 2)


def _kernel_conv1_pool(sim: torch.Tensor, w_phase: torch.Tensor, bias: torch.Tensor,
                       valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`_conv1_pool` (then the mask of pooled columns ``>= valid``, when given) in C (``dnsvr._finekernel``).

    The same products as the matrix product of :func:`_conv1_pool` (one fused multiply-add per nonzero tap of
    the 4×4 window, in window order), so the result equals it to float32 rounding — bit for bit only where
    the BLAS under ``torch.mm`` happens to sum in window order too, which depends on the CPU
    (tests/test_fine_kernel.py states the bound); no window matrix, no separate max, bias and ReLU passes.
    """
    b, h, w = sim.shape
    c = w_phase.shape[1] // 4
    sim = sim.contiguous()
    out = torch.empty((b, h // 2, w // 2, c), dtype=torch.float32)
    if valid is not None:
        valid = valid.to(torch.int64).contiguous()
    _KERNEL.conv1_pool(sim.numpy(), w_phase.contiguous().numpy(), bias.contiguous().numpy(),  # type: ignore[union-attr]
                       None if valid is None else valid.numpy(), out.numpy(), c, b, h, w, torch.get_num_threads())
    return out.permute(0, 3, 1, 2)


def _kernel_max_pool2(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`_max_pool2` (then the mask of pooled columns ``>= valid``, when given) in C; ``x`` channels-last."""
    b, c, h, w = x.shape
    out = torch.empty((b, h // 2, w // 2, c), dtype=torch.float32)
    if valid is not None:
        valid = valid.to(torch.int64).contiguous()
    nhwc = x.permute(0, 2, 3, 1).numpy()
    _KERNEL.max_pool2(nhwc, None if valid is None else valid.numpy(), out.numpy(),  # type: ignore[union-attr]
                      c, b, h, w, torch.get_num_threads())
    return out.permute(0, 3, 1, 2)


def _max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max-pooling, stride 2, of a channels-last ``[B, C, H, W]`` map (as ``F.max_pool2d(x, 2, 2)``).

    Two elementwise maxima over strided views of the NHWC memory: no pooling indices, a
    channels-last (contiguous NHWC) result.
    """
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    nhwc = x.permute(0, 2, 3, 1)[:, :h, :w]
    rows = torch.maximum(nhwc[:, 0::2], nhwc[:, 1::2])
    return torch.maximum(rows[:, :, 0::2], rows[:, :, 1::2]).permute(0, 3, 1, 2)


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


def _query_chunk(query: torch.Tensor, r0: int, r1: int, cache: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """Rows ``r0:r1`` of the query as a ``[D, rows]`` transposed view, rows zero-padded to a multiple of 16.

    Cached per call: every block of candidates reuses it.
    """
    key = (r0, r1)
    if key not in cache:
        rows = r1 - r0
        padded = torch.zeros((rows + (-rows) % 16, query.shape[1]), dtype=query.dtype)
        padded[:rows] = query[r0:r1]
        cache[key] = padded.T
    return cache[key]


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``), or None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI); True where unknown."""
    flags = cpu_flags()
    return flags is None or "avx512_vnni" in flags or "avx_vnni" in flags


#: int8 products through oneDNN's int8 kernel (``torch._int_mm``) only where the CPU has VNNI: without it
#: (an AMD EPYC with AVX2 only) that kernel is emulated and ~15x slower than a float32 product, which is
#: exact for these operands (see :func:`_int8_mm`). ``DNSVR_INT8_MM=int|float`` forces one path.
_INT8_MM_FLOAT = os.environ.get("DNSVR_INT8_MM", "float" if not _cpu_has_vnni() else "int") == "float"
#: The largest depth at which a float32 product of int8 operands is exact: every partial sum of
#: K products of magnitude <= 128·128 stays below 2**24.
_FLOAT_EXACT_DEPTH = (1 << 24) // (128 * 128)


def _int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for int8 matrices, exact, as int32.

    On the CPU ``torch._int_mm`` (oneDNN, VNNI) takes any shape (checked exact, including
    M ≤ 16 and K, N not multiples of 8 — the constraints of its CUDA kernel); tiny products go
    through int32 matmul, as small M/N gain nothing from the int8 kernel. On a CPU without VNNI the
    product is taken in float32 instead: with depth K ≤ 1024 every partial sum is an integer below 2**24,
    so each is represented exactly and the result equals the int32 product bit for bit, whatever the order.
    """
    if _INT8_MM_FLOAT and a.shape[1] <= _FLOAT_EXACT_DEPTH:
        return (a.float() @ b.float()).to(torch.int32)
    if a.shape[0] > 16 and b.shape[1] > 16:
        return torch._int_mm(a, b)
    return a.int() @ b.int()


_KERNEL_KINDS = {torch.uint8: 0, torch.float16: 1, torch.float32: 2}
#: Whether exact (float32) products of the float stages go to the kernel too (else torch's matrix product).
_KERNEL_FLOAT = True


def _kernel_fits(query: torch.Tensor, cands: list[_Prepared], fine_type: str, precision: str) -> bool:
    """Whether the compiled region stage takes this call (on a CPU that runs it): S^f_B codes as packed
    bits, or float16/float32 candidates — quantised (``precision="int8"``) or in float32."""
    if _KERNEL is None or not all(c.raw.is_contiguous() for c in cands):
        return False
    if fine_type == "bin":
        return query.dtype == torch.int8 and all(c.raw.dtype == torch.uint8 for c in cands)
    floats = all(c.raw.dtype in (torch.float16, torch.float32) for c in cands)
    if precision == "int8":
        return floats and query.dtype == torch.int8
    return floats and query.dtype == torch.float32 and _KERNEL_FLOAT


def kernel_region_chamfer(query: torch.Tensor, q_frames: int, cands: Sequence[_Prepared], regions: int,
                          fine_type: str, q_scale: torch.Tensor | None = None,
                          threads: int | None = None) -> list[torch.Tensor]:
    """The fused region stage (``dnsvr._finekernel``): :func:`_region_chamfer`'s matrices, computed in C.

    Dot products of 32 query rows against one candidate frame's regions in registers (int8 VNNI, or
    float32 FMA), their max over the frame's regions there, then the mean over each query frame's
    regions; the full region product is never written. S^f_B codes are read as packed bits (the result
    equals the torch engine's bit for bit); float candidates are quantised per frame on the fly exactly
    as :func:`_quantize_frames` does for an int8 query (the result equals the torch int8 engine up to float
    rounding of the scaled mean), or converted to float32 for a float32 query (equal to the torch float32
    product up to its summation order, ~1e-7).

    Args:
        query: int8 ``[q_frames·regions, D]`` (±1/0 codes for ``bin``; quantised values with ``q_scale``),
            or float32 (exact float products).
        q_frames: query frames.
        cands: candidates (packed uint8 codes ``[T, regions, D/8]`` for ``bin``; float16/float32
            ``[T, regions, D]`` otherwise), each padded to ``frames`` with zero columns.
        regions: regions per frame.
        fine_type: ``bin`` or a float stage (``att``/``chamfer``, whose query is quantised).
        q_scale: float32 ``[q_frames·regions]`` query row scales (float stages only).
        threads: worker threads (default ``torch.get_num_threads()``).

    Returns:
        float32 ``[q_frames, frames_i]`` per candidate (views of one ``[q_frames, Σ frames]`` matrix).

    Raises:
        RuntimeError: the extension is not available on this machine.
        ValueError: shapes, dtypes or contiguity that do not match (nothing is read then).
    """
    if _KERNEL is None:
        raise RuntimeError(f"dnsvr._finekernel is not available ({_FINEKERNEL_MISSING or 'off or unsupported CPU'})")
    bits = fine_type == "bin"
    exact = not bits and query.dtype == torch.float32
    if (query.dtype != torch.int8 and not exact) or query.ndim != 2 or not query.is_contiguous():
        raise ValueError(f"query must be a contiguous int8 (or float32, float stages) [rows, D] matrix, got "
                         f"{query.dtype} {tuple(query.shape)}")
    dims = int(query.shape[1])
    if query.shape[0] != q_frames * regions or regions < 1:
        raise ValueError(f"query has {query.shape[0]} rows, expected {q_frames} frames x {regions} regions")
    if bits or exact:
        if q_scale is not None:
            raise ValueError("packed codes and float32 queries take no query scales")
        if bits and dims % 8:
            raise ValueError(f"packed codes need D a multiple of 8, got {dims}")
    elif (q_scale is None or q_scale.dtype != torch.float32 or q_scale.shape != (query.shape[0],)
          or not q_scale.is_contiguous()):
        raise ValueError(f"q_scale must be contiguous float32 [{query.shape[0]}], got "
                         f"{None if q_scale is None else (q_scale.dtype, tuple(q_scale.shape))}")
    arrays = []
    for k, c in enumerate(cands):
        raw = c.raw
        want = (regions, dims // 8) if bits else (regions, dims)
        ok_dtype = raw.dtype == torch.uint8 if bits else raw.dtype in (torch.float16, torch.float32)
        if (not ok_dtype or raw.ndim != 3 or tuple(raw.shape[1:]) != want or not raw.is_contiguous()
                or c.frames < raw.shape[0] or c.regions != regions):
            raise ValueError(f"candidate {k}: {raw.dtype} {tuple(raw.shape)} (contiguous: {raw.is_contiguous()}, "
                             f"frames {c.frames}) does not fit [T, {want[0]}, {want[1]}] of "
                             f"{'uint8' if bits else 'float16/float32'} for fine type {fine_type!r}")
        arrays.append(raw.numpy())
    frames = [c.frames for c in cands]
    out = torch.empty((q_frames, sum(frames)), dtype=torch.float32)
    kinds = {c.raw.dtype for c in cands}
    if len(kinds) > 1:  # one kind per call: convert the odd ones (float32 and float16 mixed)
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        kinds = {torch.float32}
    kind = 0 if bits else _KERNEL_KINDS[kinds.pop()] if kinds else 2
    if exact:
        kind += 2  # the float32 variants of the float16/float32 kinds
    _KERNEL.region_chamfer(query.numpy(), None if (bits or exact) else q_scale.numpy(),  # type: ignore[union-attr]
                           arrays, frames, out.numpy(), kind, regions, dims, threads or torch.get_num_threads())
    result = []
    start = 0
    for f in frames:
        result.append(out[:, start:start + f])
        start += f
    return result


def _region_chamfer(query: torch.Tensor, q_frames: int, cands: list[_Prepared], regions: int, fine_type: str,
                    block_elements: int, precision: str = DEFAULT_PRECISION,
                    q_scale: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Frame-to-frame matrices ``[T1, T2_i]``: region dot products, max over target regions, mean over query regions.

    ``query`` is the query's ``[T1·R, D]`` matrix (int8 with per-row ``q_scale`` for the int8 path);
    candidates are converted straight into one block buffer. Int8 products go to the compiled kernel
    (:func:`kernel_region_chamfer`) where it runs; this torch code is its fallback and reference.
    """
    if _kernel_fits(query, cands, fine_type, precision) and query.is_contiguous():
        return kernel_region_chamfer(query, q_frames, cands, regions, fine_type,
                                     None if fine_type == "bin" else q_scale)
    qrows = query.shape[0]
    chunks: dict[tuple[int, int], torch.Tensor] = {}
    quant = fine_type != "bin" and precision == "int8"
    dtype = torch.int8 if (fine_type == "bin" or quant) else torch.float32
    dims = query.shape[1]
    out: list[torch.Tensor] = []
    i = 0
    while i < len(cands):
        cols = 0
        j = i
        while j < len(cands) and (j == i or (cols + cands[j].rows) * qrows <= block_elements):
            cols += cands[j].rows
            j += 1
        target = torch.empty((cols, dims), dtype=torch.float32 if quant else dtype)
        block = cands[i:j]
        if fine_type == "bin" and all(c.raw.dtype == torch.uint8 and c.raw.shape[0] == c.frames for c in block):
            # packed codes of the whole block unpacked in one gather (one op instead of a few per candidate)
            raw = torch.cat([c.raw.reshape(-1) for c in block]) if len(block) > 1 else block[0].raw.reshape(-1)
            torch.index_select(_BIT_LUT64, 0, raw.int(), out=target.view(-1).view(torch.int64))
        else:
            start = 0
            for c in block:
                c.fill(target[start:start + c.rows])
                start += c.rows
        if quant:
            # the whole block at once (a few large operations rather than a few per candidate)
            target, t_scale = _quantize_frames(target, regions)
        frame_rows = max(1, block_elements // max(1, cols * regions))
        pieces = []
        for f0 in range(0, q_frames, frame_rows):
            r0, r1 = f0 * regions, min(q_frames, f0 + frame_rows) * regions
            q_t = _query_chunk(query, r0, r1, chunks)
            nq = (r1 - r0) // regions
            # target @ query^T: the big operand stays in its row-major layout, the query chunk is a
            # transposed view of rows padded to a multiple of 16 (the int8 kernel is ~20% faster then)
            if fine_type == "bin" or quant:
                s = _int8_mm(target, q_t)
            else:
                s = target @ q_t
            # max over target regions (in int32 for codes and int8 products: one scale per target
            # frame), then mean over query regions
            s = s.view(cols // regions, regions, -1).amax(1)[:, :r1 - r0]
            s = s.view(cols // regions, nq, regions)  # [sum T2, nq, R]
            if fine_type == "bin":
                # codes: the sum of the 9 maxima is an exact integer; one division (below) rounds it
                # once, as the network's float mean of k/512 values does
                pieces.append(s.sum(2, dtype=torch.int32).T)
                continue
            s = s.float()
            if quant:
                s.mul_(t_scale[:, None, None]).mul_(q_scale[r0:r1].view(1, nq, regions))  # type: ignore[index]
            pieces.append(s.mean(2).T)
        full = torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]
        if fine_type == "bin":
            full = full.float().div_(regions * dims)
        start = 0
        for c in cands[i:j]:
            out.append(full[:, start:start + c.frames])
            start += c.frames
        i = j
    return out


@dataclass(frozen=True)
class TilePlan:
    """How one long pair is split to stay within a memory budget.

    Attributes:
        strip_frames: query frames per row strip of the frame-to-frame matrix (a multiple of 4;
            each strip is computed with :data:`HALO` extra frames on both sides for the comparator).
        tile_frames: candidate frames per comparator tile (a multiple of 4; plus the halo).
        block_frames: candidate frames per region-product block (their regions converted at once).
        peak_bytes: the estimated working memory of one step.
        product_elements: bound on one region-product chunk (elements; ``block_elements`` of
            :func:`fine_similarities`, lowered to fit the budget).
    """

    strip_frames: int
    tile_frames: int
    block_frames: int
    peak_bytes: int
    product_elements: int = DEFAULT_BLOCK_ELEMENTS


def _convert_bytes(frames: int, regions: int, dims: int, fine_type: str, precision: str) -> int:
    """Bytes of ``frames`` candidate frames converted for the region product (int8 codes, else float32)."""
    return frames * regions * dims * (1 if fine_type == "bin" else 4)


def pair_bytes(t1: int, t2: int, regions: int, dims: int, fine_type: str,
               precision: str = DEFAULT_PRECISION, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """Estimated working memory (bytes) of one (query, candidate) pair computed untiled.

    The comparator's first layer (``_CNN_BYTES_PER_POSITION`` per frame pair) dominates for the learned
    fine stages; then the frame-to-frame matrix, the converted candidate and one region-product block.
    """
    per_position = 4 + (0 if fine_type == "chamfer" else _CNN_BYTES_PER_POSITION)
    return (per_position * t1 * t2 + _convert_bytes(t2, regions, dims, fine_type, precision)
            + 4 * min(block_elements, t1 * t2 * regions * regions))


def plan_tiles(t1: int, t2: int, regions: int, dims: int, fine_type: str, memory_budget: int,
               precision: str = DEFAULT_PRECISION, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> TilePlan:
    """Tile sizes for one long pair so that one step's working memory stays under ``memory_budget``.

    A quarter of the budget goes to a row strip of the frame-to-frame matrix, half to one comparator
    tile, an eighth to the converted candidate block and an eighth to one region-product chunk; every
    size is at least the smallest that works (4 frames, one frame pair), so a budget too small for even
    that is exceeded rather than refused.

    Args:
        t1: query frames.
        t2: candidate frames.
        regions: regions per frame.
        dims: their dimensions (of the converted representation).
        fine_type: ``att`` / ``bin`` / ``chamfer``.
        memory_budget: bytes.
        precision: as :func:`fine_similarities`.
        block_elements: as :func:`fine_similarities`.

    Returns:
        The :class:`TilePlan`.
    """
    learned = fine_type != "chamfer"
    halo = 2 * HALO if learned else 0
    strip = (memory_budget // 4) // (4 * max(1, t2)) - halo
    if learned:
        # square-ish comparator tiles: the least halo recomputed for the area
        strip = min(strip, math.isqrt((memory_budget // 2) // _CNN_BYTES_PER_POSITION) - halo)
    strip = max(4, min(strip // 4 * 4, t1 + (-t1) % 4))
    if learned:
        tile = (memory_budget // 2) // (_CNN_BYTES_PER_POSITION * (strip + halo)) - halo
        tile = max(4, min(tile // 4 * 4, t2 + (-t2) % 4))
    else:
        tile = t2
    frame_bytes = _convert_bytes(1, regions, dims, fine_type, precision)
    block = max(1, min(t2, (memory_budget // 8) // frame_bytes))
    product = max(regions * regions, min(block_elements, memory_budget // 32))
    rows = min(t1, strip + halo)
    peak = (4 * rows * t2 + (_CNN_BYTES_PER_POSITION * rows * min(t2, tile + halo) if learned else 0)
            + block * frame_bytes + 4 * min(product, rows * block * regions * regions))
    return TilePlan(strip, tile, block, peak, product)


def _long_pair(q_mat: torch.Tensor, q_scale: torch.Tensor | None, t1: int, cand: _Prepared, fine_type: str,
               comparator: FineComparator | None, plan: TilePlan, precision: str,
               matrix: np.ndarray | None) -> float:
    """One pair in tiles (see :class:`TilePlan`); equals the untiled computation up to float rounding.

    The frame-to-frame matrix is computed one row strip at a time (the region product in blocks of
    candidate frames); the comparator runs over tiles of the strip with :data:`HALO` frames of context
    on every side that has data there, each tile contributing only its exact output positions; the
    Chamfer reduction (max over candidate positions, mean over query positions) is assembled across
    tiles. ``matrix`` (``[t1, t2]``), when given, receives the frame-to-frame matrix.
    """
    regions = cand.regions
    t2 = cand.frames

    def f2f_rows(r0: int, r1: int) -> torch.Tensor:
        strip = torch.empty((r1 - r0, t2))
        rows = q_mat[r0 * regions:r1 * regions]
        scale = None if q_scale is None else q_scale[r0 * regions:r1 * regions]
        for c0 in range(0, t2, plan.block_frames):
            c1 = min(t2, c0 + plan.block_frames)
            strip[:, c0:c1] = _region_chamfer(rows, r1 - r0, [cand.part(c0, c1)], regions, fine_type,
                                              plan.product_elements, precision, scale)[0]
        if matrix is not None:
            matrix[r0:r1] = strip.numpy()
        return strip

    if fine_type == "chamfer":
        total = 0.0
        for r0 in range(0, t1, plan.strip_frames):
            total += float(f2f_rows(r0, min(t1, r0 + plan.strip_frames)).amax(1).double().sum())
        return total / t1
    out_rows, out_cols = t1 // 4, t2 // 4
    step_r, step_c = plan.strip_frames // 4, plan.tile_frames // 4
    row_max = torch.full((out_rows,), -float("inf"))
    for a in range(0, out_rows, step_r):
        b = min(out_rows, a + step_r)
        r0 = max(0, 4 * a - HALO)
        r1 = t1 if b == out_rows else min(t1, 4 * b + HALO)
        strip = f2f_rows(r0, r1)
        for c in range(0, out_cols, step_c):
            d = min(out_cols, c + step_c)
            c0 = max(0, 4 * c - HALO)
            c1 = t2 if d == out_cols else min(t2, 4 * d + HALO)
            tile = strip[:, c0:c1].contiguous().unsqueeze(0)
            out = comparator(tile, torch.tensor([c1 - c0]))[0]  # type: ignore[misc]
            out = out[a - r0 // 4:b - r0 // 4, c - c0 // 4:d - c0 // 4]
            torch.maximum(row_max[a:b], out.amax(1), out=row_max[a:b])
    return float(row_max.double().mean())


def _buckets(lengths: Sequence[int], t1: int, cnn_elements: int, waste: float = 0.25) -> Iterator[list[int]]:
    """Indices grouped by similar length; each group's padded CNN input stays under ``cnn_elements``."""
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    group: list[int] = []
    for k in order:
        if group:
            width = lengths[k]
            too_wide = width > lengths[group[0]] * (1 + waste) + 4
            too_big = 32 * t1 * width * (len(group) + 1) > cnn_elements
            if too_wide or too_big:
                yield group
                group = []
        group.append(k)
    if group:
        yield group


def fine_similarities(query: np.ndarray | torch.Tensor,
                      candidates: Sequence[np.ndarray | torch.Tensor],
                      fine_type: str,
                      comparator: FineComparator | None = None,
                      *,
                      return_matrices: bool = False,
                      block_elements: int | None = None,
                      cnn_elements: int = DEFAULT_CNN_ELEMENTS,
                      precision: str = DEFAULT_PRECISION,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET,
                      ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Fine-grained similarity of one query to many candidates, batched.

    Equals, for every candidate, ``FineGrainedStudent.calculate_video_similarity(query,
    candidate)`` (``att``/``bin``) or ``dnsvr.nn.similarity.chamfer_video_similarity``
    (``chamfer``) on that pair alone.

    Args:
        query: the query's stored fine representation ``[T1, 9, D]`` (float, ±1, or packed
            uint8 bits ``[T1, 9, D/8]`` for ``bin``).
        candidates: the candidates' representations, same layout, any lengths.
        fine_type: ``"att"`` / ``"bin"`` (learned comparator) or ``"chamfer"`` (training-free).
        comparator: the comparator weights; required for ``att``/``bin``.
        return_matrices: also return each pair's frame-to-frame matrix ``[T1, T2]`` (the
            region-Chamfer matrix before the comparator; used for segment alignment).
        block_elements: bound on one region-product block (elements; default
            :data:`DEFAULT_BLOCK_ELEMENTS` for int8 products — S^f_B, ``precision="int8"`` —
            :data:`FLOAT_BLOCK_ELEMENTS` for float32 ones).
        cnn_elements: bound on one comparator batch's first feature map (elements).
        precision: ``"exact"`` (float32 region products; S^f_B's codes in exact int8) or
            ``"int8"`` (the float stages ``att``/``chamfer`` quantised to int8: faster, approximate;
            ``bin`` is unaffected).
        memory_budget: bytes of working memory one pair may use; a pair that would need more (see
            :func:`pair_bytes`) runs in tiles (:func:`plan_tiles`) with the same result. The query's
            converted matrix (``T1·9·D`` float32, or int8 for codes) and the returned matrices are
            not counted.

    Returns:
        ``(scores float32 [N], matrices or None)``; scores in [-1, 1] as the networks give them.

    Raises:
        ValueError: unknown ``fine_type`` or ``precision``, missing comparator, or mismatched shapes.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if fine_type not in FINE_TYPES:
        raise ValueError(f"unknown fine type {fine_type!r}; expected one of {FINE_TYPES}")
    if fine_type != "chamfer" and comparator is None:
        raise ValueError(f"fine type {fine_type!r} needs the comparator weights")
    n = len(candidates)
    if n == 0:
        return np.zeros(0, dtype=np.float32), ([] if return_matrices else None)
    if block_elements is None:
        int8 = fine_type == "bin" or precision == "int8"
        block_elements = DEFAULT_BLOCK_ELEMENTS if int8 else FLOAT_BLOCK_ELEMENTS
    with torch.inference_mode():
        q = _prepare(query, fine_type)
        q_mat = q.matrix()
        q_scale = None
        if precision == "int8" and fine_type != "bin":
            q_mat, q_scale = quantize_rows(q_mat)
        regions = q.regions
        cands = _prepare_many(candidates, fine_type)
        for k, c in enumerate(cands):
            if c.dims != q.dims or c.regions != regions:
                raise ValueError(f"candidate {k} has shape {tuple(candidates[k].shape)}, "
                                 f"query {tuple(query.shape)}: region count/dims differ")
        scores = np.zeros(n, dtype=np.float32)
        matrices: list[np.ndarray] | None = [None] * n if return_matrices else None  # type: ignore[list-item]
        # long pairs one at a time, in tiles bounded by the memory budget
        lengths = [c.frames for c in cands]
        short: list[int] = []
        for k, c in enumerate(cands):
            if c.frames == c.raw.shape[0] and pair_bytes(q.frames, c.frames, regions, q.dims, fine_type, precision,
                                                         block_elements) > memory_budget:
                plan = plan_tiles(q.frames, c.frames, regions, q.dims, fine_type, memory_budget, precision,
                                  block_elements)
                logger.debug("candidate %d (%d x %d frames) in tiles: %s", k, q.frames, c.frames, plan)
                mat = np.empty((q.frames, c.frames), dtype=np.float32) if matrices is not None else None
                scores[k] = _long_pair(q_mat, q_scale, q.frames, c, fine_type, comparator, plan, precision, mat)
                if matrices is not None:
                    matrices[k] = mat[:query.shape[0]]  # type: ignore[index]
            else:
                short.append(k)
        # the rest in groups of similar length: region product then comparator
        for sub in _buckets([lengths[k] for k in short], q.frames, cnn_elements):
            group = [short[k] for k in sub]
            mats = _region_chamfer(q_mat, q.frames, [cands[k] for k in group], regions, fine_type, block_elements,
                                   precision, q_scale)
            if matrices is not None:
                for k, m in zip(group, mats):
                    matrices[k] = m[:query.shape[0], :candidates[k].shape[0]].numpy().copy()
            if fine_type == "chamfer":
                for k, m in zip(group, mats):
                    scores[k] = float(m.amax(1).mean())
                continue
            width = max(m.shape[1] for m in mats)
            if all(m.shape[1] == width for m in mats):
                batch = torch.stack(mats)
            else:
                width += (-width) % 4  # mixed lengths: re-masked after each layer
                batch = torch.zeros((len(group), q.frames, width))
                for b, m in enumerate(mats):
                    batch[b, :, :m.shape[1]] = m
            widths = torch.tensor([m.shape[1] for m in mats], dtype=torch.int64)
            out = comparator(batch, widths)  # type: ignore[misc]
            valid = widths // 4
            if bool((valid < out.shape[-1]).any()):
                cols = torch.arange(out.shape[-1])
                out = out.masked_fill(cols[None, None, :] >= valid[:, None, None], -float("inf"))
            scores[np.asarray(group)] = out.amax(2).mean(1).numpy()
    return scores, matrices
