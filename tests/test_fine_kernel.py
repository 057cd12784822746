"""The compiled region stage (dnsvr._finekernel) against the torch engine it replaces.

What is exact and what is not: S^f_B codes give bit-identical similarity matrices (integer arithmetic on
both sides) and max-pooling is exact; every float sum (the int8 stages' scaled means, conv1 + pooling, the
comparator's scores) is compared to float32 rounding, since the BLAS under torch picks its summation order
per CPU and per shape (each test states its bound). The torch engine is the reference here (itself checked against the
networks in test_fine_engine.py / test_fine_tiles.py, which run with the kernel on).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dnsvr.fine import codes as fine_codes
from dnsvr.fine import comparator as fine_comparator
from dnsvr.fine import kernel as fine_kernel
from dnsvr.fine import regions as fine_regions
from dnsvr.fine import FineComparator, fine_similarities, pack_codes
from dnsvr.nn import FineGrainedStudent

needs_kernel = pytest.mark.skipif(fine_kernel._KERNEL is None, reason="dnsvr._finekernel not built or CPU without VNNI")


def _unit(rng: np.random.Generator, frames: int, regions: int, dims: int) -> np.ndarray:
    x = rng.standard_normal((frames, regions, dims)).astype(np.float32)
    x[..., 0] += 1.0  # some structure: the maxima are not all alike
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _codes(rng: np.random.Generator, frames: int, regions: int, dims: int) -> np.ndarray:
    return pack_codes(np.where(rng.standard_normal((frames, regions, dims)) > 0, 1, -1))


def _both(monkeypatch: pytest.MonkeyPatch, fn):
    """``fn()`` with the kernel, then with the torch engine."""
    with_kernel = fn()
    monkeypatch.setattr(fine_kernel, "_KERNEL", None)
    torch_engine = fn()
    monkeypatch.setattr(fine_kernel, "_KERNEL", fine_kernel._select_kernel())
    return with_kernel, torch_engine


def _region_stage(query, cands, fine_type: str, precision: str, regions: int, spy: list | None = None):
    """:func:`_region_chamfer` on prepared inputs, as fine_similarities calls it."""
    with torch.inference_mode():
        q = fine_codes._prepare(query, fine_type)
        q_mat, q_scale = q.matrix(), None
        if precision == "int8" and fine_type != "bin":
            q_mat, q_scale = fine_codes.quantize_rows(q_mat)
        prepared = fine_codes._prepare_many(cands, fine_type)
        if spy is not None:
            spy.append(fine_regions._kernel_fits(q_mat, prepared, fine_type, precision))
        return [m.clone() for m in fine_regions._region_chamfer(q_mat, q.frames, prepared, regions, fine_type, 3_000,
                                                         precision, q_scale)]


def test_extension_required_in_ci() -> None:
    """CI sets DNSVR_REQUIRE_EXTENSIONS=1: the kernel must be built, never a silent fallback."""
    if os.environ.get("DNSVR_REQUIRE_EXTENSIONS") != "1":
        pytest.skip("DNSVR_REQUIRE_EXTENSIONS is not set")
    from dnsvr import _finekernel  # raises ImportError when not built

    assert fine_kernel._finekernel is _finekernel
    if _finekernel.supported():
        assert fine_kernel._KERNEL is _finekernel


CASES = [  # (query frames, candidate frames, regions, dims)
    (1, [1, 2, 3], 9, 64),
    (2, [5, 1, 4], 9, 512),
    (3, [7, 61], 9, 64),
    (4, [4, 3, 2, 1], 9, 512),
    (5, [130, 5], 9, 64),
    (7, [7, 3, 61], 4, 64),
    (61, [61, 2, 60, 130], 9, 512),
    (130, [7, 1], 9, 64),
    (9, [5, 12], 13, 64),
    (6, [6, 10], 1, 72),
    (8, [3, 9], 18, 40),
]


@needs_kernel
@pytest.mark.parametrize("t1,t2s,regions,dims", CASES)
def test_codes_bit_exact(monkeypatch, t1, t2s, regions, dims) -> None:
    """Packed codes: the matrices equal the torch engine's bit for bit (videos shorter than 4 frames get
    zero frames, on the query and on the candidate side)."""
    rng = np.random.default_rng(t1 * 1000 + len(t2s) * 10 + regions)
    query = _codes(rng, t1, regions, dims)
    cands = [_codes(rng, n, regions, dims) for n in t2s]
    spy: list[bool] = []
    got, ref = _both(monkeypatch, lambda: _region_stage(query, cands, "bin", "exact", regions, spy))
    assert spy == [True, False]  # the kernel ran, then the torch engine
    assert [m.shape for m in got] == [m.shape for m in ref] == [(max(t1, 4), max(n, 4)) for n in t2s]
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("precision", ["int8", "exact"])
@pytest.mark.parametrize("fine_type", ["att", "chamfer"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("t1,t2s,regions,dims", CASES + [(5, [3, 6], 9, 66), (3, [2], 2, 3)])
def test_float_stages_match(monkeypatch, precision, fine_type, dtype, t1, t2s, regions, dims) -> None:
    """The float stages in the kernel equal the torch path: precision="int8" with the same quantisation
    and int32 maxima (the scaled mean to float rounding), "exact" with float32 products (up to summation
    order)."""
    rng = np.random.default_rng(t1 * (7 if precision == "int8" else 11) + regions)
    query = _unit(rng, t1, regions, dims).astype(dtype)
    cands = [_unit(rng, n, regions, dims).astype(dtype) for n in t2s]
    spy: list[bool] = []
    got, ref = _both(monkeypatch, lambda: _region_stage(query, cands, fine_type, precision, regions, spy))
    assert spy == [True, False]
    pad = 4 if fine_type == "att" else 1
    assert [m.shape for m in got] == [m.shape for m in ref] == [(max(t1, pad), max(n, pad)) for n in t2s]
    for a, b in zip(got, ref):
        assert float((a - b).abs().max()) <= 1e-6


@needs_kernel
def test_mixed_float_dtypes_and_zero_frames(monkeypatch) -> None:
    """float16 and float32 candidates in one call; an all-zero frame (scale 0) gives zero columns."""
    rng = np.random.default_rng(3)
    query = _unit(rng, 6, 9, 64)
    a = _unit(rng, 5, 9, 64).astype(np.float16)
    b = _unit(rng, 7, 9, 64)
    b[2] = 0.0
    got, ref = _both(monkeypatch, lambda: _region_stage(query, [a, b], "chamfer", "int8", 9))
    for x, y in zip(got, ref):
        assert float((x - y).abs().max()) <= 1e-6
    assert not got[1][:, 2].any()


@needs_kernel
@pytest.mark.parametrize("fine_type", ["att", "bin"])
def test_scores_and_matrices_through_the_engine(monkeypatch, fine_type) -> None:
    """fine_similarities end to end (comparator included), kernel vs torch engine; bin: equal scores;
    both: against the network per pair."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    net = FineGrainedStudent(dims=64, attention=fine_type == "att", binarization=fine_type == "bin").eval()
    lengths = [1, 3, 4, 5, 7, 16, 61]
    videos = [_unit(rng, n, 9, 64) for n in [13, *lengths]]
    with torch.no_grad():
        idx = [net.index_video(torch.from_numpy(v)).reshape(v.shape[0], 9, -1) for v in videos]
        expected = [float(net.calculate_video_similarity(idx[0], c).reshape(-1)[0]) for c in idx[1:]]
    stored = [pack_codes(v) if fine_type == "bin" else v.numpy().astype(np.float16) for v in idx]
    comp = FineComparator(net)
    precision = "exact" if fine_type == "bin" else "int8"

    def run():
        return fine_similarities(stored[0], stored[1:], fine_type, comp, return_matrices=True, precision=precision)

    (got, got_m), (ref, ref_m) = _both(monkeypatch, run)
    if fine_type == "bin":
        # the ±1 matrices are integer arithmetic on both sides: bit for bit; the scores go through the comparator,
        # whose conv1 differs by float32 rounding (test_conv1_pool_matches_to_rounding, ~1e-8 here) and whose
        # three further layers of unit-scale weights keep that far below 1e-6
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        for a, b in zip(got_m, ref_m):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:
        np.testing.assert_allclose(got, ref, atol=1e-6)
        for a, b in zip(got_m, ref_m):
            np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(got, expected, atol=2e-2)  # int8 vs exact network (test_fine_int8's bound)


@needs_kernel
@pytest.mark.parametrize("fine_type", ["bin", "att"])
def test_tiles_with_kernel_equal_untiled(fine_type) -> None:
    """Long pairs in tiles (query row strips, candidate frame blocks) through the kernel equal the untiled pair."""
    torch.manual_seed(1)
    rng = np.random.default_rng(6)
    net = FineGrainedStudent(dims=32, attention=fine_type == "att", binarization=fine_type == "bin").eval()
    videos = [_unit(rng, n, 9, 32) for n in (37, 203, 38)]
    with torch.no_grad():
        idx = [net.index_video(torch.from_numpy(v)).reshape(v.shape[0], 9, -1).numpy() for v in videos]
    stored = [pack_codes(v) for v in idx] if fine_type == "bin" else [v.astype(np.float16) for v in idx]
    comp = FineComparator(net)
    precision = "exact" if fine_type == "bin" else "int8"
    whole, whole_m = fine_similarities(stored[0], stored[1:], fine_type, comp, return_matrices=True,
                                       precision=precision)
    tiled, tiled_m = fine_similarities(stored[0], stored[1:], fine_type, comp, return_matrices=True,
                                       precision=precision, memory_budget=300_000)
    if fine_type == "bin":
        np.testing.assert_array_equal(np.concatenate([m.ravel() for m in tiled_m]),
                                      np.concatenate([m.ravel() for m in whole_m]))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_thread_counts_agree(threads) -> None:
    rng = np.random.default_rng(7)
    q = fine_codes._prepare(_codes(rng, 30, 9, 512), "bin")
    cands = fine_codes._prepare_many([_codes(rng, n, 9, 512) for n in (40, 3, 25)], "bin")
    with torch.inference_mode():
        q_mat = q.matrix()
        one = fine_regions.kernel_region_chamfer(q_mat, q.frames, cands, 9, "bin", threads=1)
        many = fine_regions.kernel_region_chamfer(q_mat, q.frames, cands, 9, "bin", threads=threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_fallback_when_forced_off() -> None:
    """DNSVR_FINE_KERNEL=0 (or no extension): the torch engine runs and gives the same scores."""
    code = ("import numpy as np; from dnsvr.fine import kernel as _kernel; from dnsvr.fine import fine_similarities, pack_codes;"
            "rng = np.random.default_rng(0);"
            "v = [pack_codes(np.sign(rng.standard_normal((n, 9, 64)))) for n in (6, 9, 2)];"
            "s, _ = fine_similarities(v[0], v[1:], 'chamfer');"
            "print(_kernel._KERNEL is None, repr(s.tolist()))")
    env = dict(os.environ, DNSVR_FINE_KERNEL="0", PYTHONPATH=os.pathsep.join(sys.path))
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    env["DNSVR_FINE_KERNEL"] = "1"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert off.stdout.split(" ", 1)[0] == "True"
    assert off.stdout.split(" ", 1)[1] == on.stdout.split(" ", 1)[1]
    with pytest.raises(RuntimeError, match="not available"):
        old = fine_kernel._KERNEL
        fine_kernel._KERNEL = None
        try:
            fine_regions.kernel_region_chamfer(torch.zeros((9, 64), dtype=torch.int8), 1, [], 9, "bin")
        finally:
            fine_kernel._KERNEL = old


def test_cpu_without_vnni_uses_torch(monkeypatch) -> None:
    """On a CPU without AVX-512 VNNI the module imports but is not selected (the torch engine runs)."""
    if fine_kernel._finekernel is None:
        pytest.skip("dnsvr._finekernel not built")

    class NoVnni:
        @staticmethod
        def supported() -> bool:
            return False

    monkeypatch.setattr(fine_kernel, "_finekernel", NoVnni)
    assert fine_kernel._select_kernel() is None
    monkeypatch.setenv("DNSVR_FINE_KERNEL", "0")
    monkeypatch.setattr(fine_kernel, "_finekernel", _finekernel_module())
    assert fine_kernel._select_kernel() is None


def _finekernel_module():
    from dnsvr import _finekernel

    return _finekernel


@needs_kernel
def test_bad_input_raises() -> None:
    rng = np.random.default_rng(8)
    q = fine_codes._prepare(_codes(rng, 4, 9, 64), "bin")
    cands = fine_codes._prepare_many([_codes(rng, 5, 9, 64)], "bin")
    floats = fine_codes._prepare_many([_unit(rng, 5, 9, 64).astype(np.float16)], "att")
    with torch.inference_mode():
        q_mat = q.matrix()
        run = fine_regions.kernel_region_chamfer
        with pytest.raises(ValueError, match="int8"):
            run(q_mat.float(), 4, cands, 9, "bin")
        with pytest.raises(ValueError, match="rows"):
            run(q_mat, 5, cands, 9, "bin")
        with pytest.raises(ValueError, match="contiguous int8"):
            run(q_mat.view(4, 9, 64).transpose(0, 1).reshape(36, 64)[::2], 2, cands, 9, "bin")
        with pytest.raises(ValueError, match="candidate 0"):
            run(q_mat, 4, floats, 9, "bin")  # float candidates for codes
        with pytest.raises(ValueError, match="q_scale"):
            run(q_mat, 4, floats, 9, "att")  # no query scales
        with pytest.raises(ValueError, match="candidate 0"):
            bad = fine_codes._Prepared(cands[0].raw.transpose(1, 2), 5, 9, 64, "bin")
            run(q_mat, 4, [bad], 9, "bin")
        with pytest.raises(ValueError, match="candidate 0"):
            short = fine_codes._Prepared(cands[0].raw, 3, 9, 64, "bin")  # fewer frames than stored
            run(q_mat, 4, [short], 9, "bin")
        # the C entry point checks every size itself
        k = fine_kernel._KERNEL
        raw = cands[0].raw.numpy()
        out = np.empty((4, 5), dtype=np.float32)
        k.region_chamfer(q_mat.numpy(), None, [raw], [5], out, 0, 9, 64, 2)  # a good call
        with pytest.raises(ValueError, match="out has"):
            k.region_chamfer(q_mat.numpy(), None, [raw], [5], np.empty((4, 4), np.float32), 0, 9, 64, 2)
        with pytest.raises(ValueError, match="candidate 0"):
            k.region_chamfer(q_mat.numpy(), None, [np.ascontiguousarray(raw[:, :, :7])], [5], out, 0, 9, 64, 2)
        with pytest.raises(ValueError, match="candidate 0"):
            k.region_chamfer(q_mat.numpy(), None, [raw], [4], out, 0, 9, 64, 2)
        with pytest.raises(ValueError, match="query has"):
            k.region_chamfer(q_mat.numpy()[:-1], None, [raw], [5], out, 0, 9, 64, 2)
        with pytest.raises(ValueError, match="scales"):
            k.region_chamfer(q_mat.numpy(), np.ones(36, np.float32), [raw], [5], out, 0, 9, 64, 2)
        with pytest.raises(ValueError, match="query scales"):
            k.region_chamfer(q_mat.numpy(), np.ones(35, np.float32), [floats[0].raw.numpy()], [5], out, 1, 9, 64, 2)
        with pytest.raises(ValueError, match="bad arguments"):
            k.region_chamfer(q_mat.numpy(), None, [raw], [5], out, 5, 9, 64, 2)
        with pytest.raises(ValueError, match="float32"):  # an int8 query for float32 products
            k.region_chamfer(q_mat.numpy()[:-4], None, [floats[0].raw.numpy()], [5], out, 3, 9, 64, 2)
        with pytest.raises(ValueError, match="no query scales"):
            k.region_chamfer(q_mat.float().numpy(), np.ones(36, np.float32), [floats[0].raw.numpy()], [5], out, 3,
                             9, 64, 2)
        with pytest.raises(ValueError, match="frame counts"):
            k.region_chamfer(q_mat.numpy(), None, [raw], [5, 5], out, 0, 9, 64, 2)
        with pytest.raises(ValueError, match="not C-contiguous"):  # numpy refuses a strided buffer
            k.region_chamfer(q_mat.numpy(), None, [raw[:, :, ::2]], [5], out, 0, 9, 64, 2)
        with pytest.raises(TypeError):  # read-only output
            k.region_chamfer(q_mat.numpy(), None, [raw], [5], b"\0" * out.nbytes, 0, 9, 64, 2)


def _conv1_pool_rounding_bound(sim: torch.Tensor, w_phase: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """How far two float32 evaluations of :func:`_conv1_pool` may differ, element by element.

    Each pre-bias value is a dot product of one 4×4 window (16 taps) with a phase's weights. Summed in float32
    in *any* order, with or without fused multiply-adds, it lies within ``γ_16 · Σ|x_i w_i|`` of the exact
    value (Higham, eq. 3.5; ``γ_n = n·u / (1 − n·u)``, ``u = 2⁻²⁴``), so two evaluations differ by at most twice
    that. The max over the 4 phases and the ReLU are 1-Lipschitz (they add nothing); the bias addition rounds
    once on each side (``u·|result|`` each). The window sums are taken in float64 so the bound has no error of
    its own worth counting.
    """
    u = 2.0 ** -24
    gamma16 = 16 * u / (1 - 16 * u)
    b, h, w = sim.shape
    ho, wo = h // 2, w // 2
    c = w_phase.shape[1] // 4
    xp = torch.nn.functional.pad(sim.double().abs(), (1, 2 * wo + 1 - w, 1, 2 * ho + 1 - h))
    s0, s1, _ = xp.stride()
    windows = xp.as_strided((b, ho, wo, 4, 4), (s0, 2 * s1, 2, s1, 1)).reshape(b * ho * wo, 16)
    magnitude = torch.mm(windows, w_phase.double().abs()).view(b * ho * wo, 4, c).amax(1)
    magnitude = magnitude.view(b, ho, wo, c).permute(0, 3, 1, 2)
    return 2 * gamma16 * magnitude + 2 * u * ref.double().abs() + 1e-30


@needs_kernel
@pytest.mark.parametrize("b,h,w", [(1, 4, 4), (3, 61, 37), (2, 5, 130), (5, 60, 60), (2, 2, 3), (1, 4, 5)])
def test_conv1_pool_matches_to_rounding(b, h, w) -> None:
    """The comparator's conv1 + pooling in C equals the matrix-product version to float32 rounding, masks exactly.

    Not bit for bit: the reference's ``torch.mm`` goes through oneDNN/BLAS, which picks its kernels — and so
    its summation order — per CPU and per shape (on an AMD EPYC a 2×3 input differed by 1.5e-8 where an
    Intel Xeon was bit-identical). The bound is the rounding bound of both evaluations
    (:func:`_conv1_pool_rounding_bound`). The masked and unmasked C results come from the same C code in the
    same order, so those two are compared bit for bit.
    """
    torch.manual_seed(b * h + w)
    comp = FineComparator(FineGrainedStudent(binarization=True).eval())
    sim = torch.randn(b, h, w) * 0.3
    valid = torch.tensor([max(1, (w // 2) - k) for k in range(b)])
    with torch.inference_mode():
        ref = fine_comparator._conv1_pool(sim, comp._w1p, comp.w["conv1.bias"])
        got = fine_comparator._kernel_conv1_pool(sim, comp._w1p, comp.w["conv1.bias"], None)
        assert got.shape == ref.shape
        bound = _conv1_pool_rounding_bound(sim, comp._w1p, ref)
        excess = ((got.double() - ref.double()).abs() - bound).max().item()
        assert excess <= 0, f"C conv1_pool differs from torch beyond float32 rounding by {excess:.3g}"
        assert bound.max().item() < 1e-5  # the bound itself is tight: rounding, not a loose tolerance
        masked = fine_comparator._kernel_conv1_pool(sim, comp._w1p, comp.w["conv1.bias"], valid)
        cols = torch.arange(w // 2)
        expected = got * (cols[None, :] < valid[:, None]).float()[:, None, None, :]
        assert torch.equal(masked, expected)
    with pytest.raises(ValueError, match="buffer sizes"):
        fine_kernel._KERNEL.conv1_pool(sim.numpy(), comp._w1p.numpy(), comp.w["conv1.bias"].numpy(), None,
                                 np.empty((b, h // 2, w // 2, 16), np.float32), 32, b, h, w, 1)
    with pytest.raises(ValueError, match="valid"):
        fine_kernel._KERNEL.conv1_pool(sim.numpy(), comp._w1p.numpy(), comp.w["conv1.bias"].numpy(), np.zeros(b + 1),
                                 np.empty((b, h // 2, w // 2, 32), np.float32), 32, b, h, w, 1)


@needs_kernel
@pytest.mark.parametrize("b,h,w", [(1, 2, 2), (3, 31, 30), (2, 15, 65), (4, 30, 30)])
def test_max_pool2_bit_identical(b, h, w) -> None:
    torch.manual_seed(h * w)
    x = torch.randn(b, 64, h, w).contiguous(memory_format=torch.channels_last)
    valid = torch.tensor([max(1, w // 2 - k) for k in range(b)])
    ref = fine_comparator._max_pool2(x)
    assert torch.equal(fine_comparator._kernel_max_pool2(x, None), ref)
    cols = torch.arange(w // 2)
    expected = ref * (cols[None, :] < valid[:, None]).float()[:, None, None, :]
    assert torch.equal(fine_comparator._kernel_max_pool2(x, valid), expected)
    with pytest.raises(ValueError, match="buffer sizes"):
        fine_kernel._KERNEL.max_pool2(x.permute(0, 2, 3, 1).numpy(), None, np.empty((b, h // 2, w // 2, 32), np.float32),
                                64, b, h, w, 1)
