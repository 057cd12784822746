"""The comparator CNN (ViSiL's ``visil_head``) over a batch of frame-to-frame matrices: :class:`FineComparator`.

conv1 and its 2×2 max-pooling run as one matrix product over 4×4 windows; where the compiled stages run
(:mod:`dnsvr.fine.kernel`), conv1 + pooling and the second pooling run in C with the same results.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from . import kernel

_COMPARATOR_KEYS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                    "conv3.weight", "conv3.bias", "fconv.weight", "fconv.bias")


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
        if kernel._KERNEL is not None and sim.dtype == torch.float32 and positions >= 2 and channels_ok:
            # the same arithmetic in C (each window times each phase's kernel, fused multiply-adds in the
            # window's order: equal to the matrix product to float32 rounding — bit-identical wherever the BLAS
            # sums in window order too, which depends on the CPU and the shape), the column mask included
            x = _kernel_conv1_pool(sim, self._w1p, w["conv1.bias"], None if full else w1)
        else:
            x = _conv1_pool(sim, self._w1p, w["conv1.bias"])  # [B, 32, H // 2, W // 2], channels-last
            x = colmask(x, w1)
        x = fused_conv(self._convs[0], x, "relu")
        w2 = w1 // 2
        if (kernel._KERNEL is not None and x.dtype == torch.float32 and x.shape[1] % 16 == 0 and min(x.shape[2:]) >= 2
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
    kernel._KERNEL.conv1_pool(sim.numpy(), w_phase.contiguous().numpy(), bias.contiguous().numpy(),  # type: ignore[union-attr]
                       None if valid is None else valid.numpy(), out.numpy(), c, b, h, w, torch.get_num_threads())
    return out.permute(0, 3, 1, 2)


def _kernel_max_pool2(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`_max_pool2` (then the mask of pooled columns ``>= valid``, when given) in C; ``x`` channels-last."""
    b, c, h, w = x.shape
    out = torch.empty((b, h // 2, w // 2, c), dtype=torch.float32)
    if valid is not None:
        valid = valid.to(torch.int64).contiguous()
    nhwc = x.permute(0, 2, 3, 1).numpy()
    kernel._KERNEL.max_pool2(nhwc, None if valid is None else valid.numpy(), out.numpy(),  # type: ignore[union-attr]
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
