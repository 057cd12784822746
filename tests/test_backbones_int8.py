"""Opt-in int8 inference (ResNet-50 on PyTorch's quantized x86 kernels): graph, fidelity, refusals, provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnsvr.backbones import INT8_BACKBONES, FeatureExtractor
from dnsvr.backbones._int8 import int8_available, plain_stages, random_weights_scaled_on

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no quantized x86 kernels")


def _frames(n: int = 12, size: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random images (natural-image-like statistics, unlike white noise)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(n, 4, 4, 3))
    up = np.repeat(np.repeat(low, size // 4, axis=1), size // 4, axis=2)
    return np.clip(up + rng.normal(0, 12, size=up.shape), 0, 255).astype(np.uint8)




def test_plain_graph_equals_the_folded_network():
    ex = FeatureExtractor("resnet50", weights="random")
    x = ex.normalize(_frames(2))
    with torch.inference_mode():
        ref = ex.net.forward_stages(x)
        out = plain_stages("resnet50", ex.net)(x)
    for r, o in zip(ref, out):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_int8_regions_stay_close_to_fp32_and_calibrate_once():
    frames = _frames(16)
    weights = random_weights_scaled_on(frames[:8])
    fp32 = FeatureExtractor("resnet50", weights=weights)
    int8 = FeatureExtractor("resnet50", weights=weights, precision="int8", calibration_frames=8)
    a, b = fp32(frames[8:]), int8(frames[8:])                   # calibrates on the first 8 frames it sees
    assert b.shape == a.shape == (8, 9, 3840) and b.dtype == torch.float32
    cos = (a * b).sum(-1)
    assert float(cos.mean()) > 0.9, float(cos.mean())
    torch.testing.assert_close(b.norm(dim=-1), torch.ones(8, 9), rtol=1e-4, atol=1e-4)
    q = int8._int8
    int8(frames[:4])
    assert int8._int8 is q                                      # calibrated once
    wrong = (a[:, :, None] * a[:, None, :]).sum(-1)             # int8 is not just any unit vector: ranks agree
    assert float(cos.mean()) > float(wrong.mean())
    assert int8.identity["precision"] == "int8" and fp32.identity["precision"] == "fp32"


def test_int8_refusals():
    assert INT8_BACKBONES == ("resnet50",)
    with pytest.raises(ValueError, match="resnet50"):
        FeatureExtractor("efficientnet_lite0", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        FeatureExtractor("resnet50", weights="random", precision="bf16")
    with pytest.raises(ValueError, match="folded"):
        FeatureExtractor("resnet50", weights="random", precision="int8", fold_batchnorm=False)
    with pytest.raises(ValueError, match="int8"):
        FeatureExtractor("resnet50", weights="random").calibrate(_frames(2))


def test_calibration_leaves_no_global_state_behind():
    # calibrating must not leave inference mode switched on for the rest of the process (a later model built
    # outside it would get inference-tensor weights)
    assert not torch.is_inference_mode_enabled()
    FeatureExtractor("resnet50", weights="random", precision="int8", calibration_frames=20)(_frames(20, size=32))
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
