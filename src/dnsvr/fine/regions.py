"""The region stage: query regions against candidate regions, max over a candidate frame's regions, mean over
the query frame's — the frame-to-frame matrices the comparator (or Chamfer over frames) reads.

Blocks of candidates bounded in elements; int8 products for S^f_B's codes and ``precision="int8"``; the
fused C stage (:func:`kernel_region_chamfer`) where it runs, this torch code its fallback and reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from . import kernel
from .codes import _BIT_LUT64, _Prepared, _quantize_frames
from .params import DEFAULT_PRECISION

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


#: int8 products through oneDNN's int8 kernel (``torch._int_mm``) only where the CPU has VNNI: without it
#: (an AMD EPYC with AVX2 only) that kernel is emulated and ~15x slower than a float32 product, which is
#: exact for these operands (see :func:`_int8_mm`). ``DNSVR_INT8_MM=int|float`` forces one path.
_INT8_MM_FLOAT = os.environ.get("DNSVR_INT8_MM", "float" if not kernel._cpu_has_vnni() else "int") == "float"
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
    if kernel._KERNEL is None or not all(c.raw.is_contiguous() for c in cands):
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
    if kernel._KERNEL is None:
        raise RuntimeError(f"dnsvr._finekernel is not available ({kernel._FINEKERNEL_MISSING or 'off or unsupported CPU'})")
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
    kernel._KERNEL.region_chamfer(query.numpy(), None if (bits or exact) else q_scale.numpy(),  # type: ignore[union-attr]
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
