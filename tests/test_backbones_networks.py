"""Backbone networks: torchvision naming for ResNet-50, the packaged Lite0 weights, batch-norm folding, extractor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnsvr.backbones import EfficientNetLite0, FeatureExtractor, PCAWhitening, ResNet50, l3_imac
from dnsvr.backbones.efficientnet import default_lite0_weights


def _randomize_batchnorm(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so folding is actually exercised (fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def test_resnet50_torchvision_names_and_shapes() -> None:
    net = ResNet50()
    sd = net.state_dict()
    known = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.bias": (1024,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for key, shape in known.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision's resnet50 state dict has 320 entries and 25,557,032 parameters
    assert len(sd) == 320
    assert sum(p.numel() for p in net.parameters()) == 25_557_032
    assert not any(k.startswith("layer1.1.downsample") for k in sd)
    net.eval()
    with torch.inference_mode():
        stages = net.forward_stages(torch.rand(1, 3, 224, 224))
        logits = net(torch.rand(1, 3, 224, 224))
    assert [tuple(s.shape) for s in stages] == [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]
    assert logits.shape == (1, 1000)
    # a torchvision-layout checkpoint loads strictly
    ResNet50().load_state_dict(copy.deepcopy(sd), strict=True)


def test_lite0_loads_packaged_weights_strictly() -> None:
    sd = torch.load(default_lite0_weights(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    net.load_state_dict(sd, strict=True)
    assert set(net.state_dict()) == set(sd)
    net.eval()
    with torch.inference_mode():
        stages = net.forward_stages(torch.rand(2, 3, 224, 224))
    assert [tuple(s.shape) for s in stages] == [(2, 24, 56, 56), (2, 40, 28, 28), (2, 112, 14, 14), (2, 1280, 7, 7)]


@pytest.mark.parametrize("cls", [ResNet50, EfficientNetLite0])
def test_batchnorm_folding_is_exact(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = cls().eval()
    _randomize_batchnorm(net)
    folded = copy.deepcopy(net)
    n = folded.fold_batchnorm()
    assert n == (53 if cls is ResNet50 else 49)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        ref = net.forward_stages(x)
        out = folded.forward_stages(x)
        ref_regions, out_regions = l3_imac(ref), l3_imac(out)
    for r, o in zip(ref, out):
        scale = r.abs().max().item()
        assert (r - o).abs().max().item() <= 1e-4 * max(1.0, scale)
    assert (ref_regions - out_regions).abs().max().item() < 1e-4
    with pytest.raises(RuntimeError, match="eval mode"):
        cls().train().fold_batchnorm()


@pytest.mark.parametrize("backbone,region_dims", [("efficientnet_lite0", 1456), ("resnet50", 3840)])
def test_extractor_shapes_and_folding(backbone: str, region_dims: int) -> None:
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 128, 128, 3), dtype=np.uint8)
    weights = None if backbone == "efficientnet_lite0" else "random"
    if weights == "random":
        # random weights with non-trivial batch norm, shared by both extractors as a state dict
        net = ResNet50().eval()
        _randomize_batchnorm(net)
        weights = net.state_dict()
    fast = FeatureExtractor(backbone, weights=weights, batch_size=2)
    plain = FeatureExtractor(backbone, weights=weights, fold_batchnorm=False)
    assert fast.dims == region_dims == fast.region_dims and fast.backbone_name == backbone
    assert set(fast.preprocessing) >= {"input_size", "mean", "std", "scale"}
    out = fast(frames)
    assert out.shape == (3, 9, region_dims) and out.dtype == torch.float32
    np.testing.assert_allclose(torch.linalg.norm(out, dim=-1).numpy(), 1.0, atol=1e-5)
    assert (out - plain(frames)).abs().max().item() < 1e-4
    # a tensor input and batching give the same result
    assert (fast.extract(torch.from_numpy(frames), batch_size=3) - out).abs().max().item() < 1e-5
    assert fast(frames[:0]).shape == (0, 9, region_dims)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        fast(frames.reshape(3, 128, 3, 128))
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()


def test_extractor_with_whitening_and_preprocessing() -> None:
    ex = FeatureExtractor("efficientnet_lite0")
    assert ex.preprocessing["mean"] == [0.5, 0.5, 0.5] and ex.preprocessing["std"] == [0.5, 0.5, 0.5]
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 128, 128, 3), dtype=np.uint8)
    x = ex.normalize(frames)
    np.testing.assert_allclose(x.numpy(), frames.transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)
    raw = ex(frames)
    white = PCAWhitening(dims=16).fit(np.random.default_rng(2).normal(size=(100, ex.region_dims)))
    wex = FeatureExtractor("efficientnet_lite0", whitening=white)
    assert wex.dims == 16 and wex.identity["whitening"] == white.identity
    out = wex(frames)
    assert out.shape == (4, 9, 16)
    np.testing.assert_allclose(out.numpy(), white(raw).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="1456-d"):
        FeatureExtractor("resnet50", whitening=white, weights="random")
    with pytest.raises(ValueError, match="choose one of"):
        FeatureExtractor("vgg16")


@pytest.mark.parametrize("kernel,stride,groups", [(3, 2, 1), (5, 2, 8), (3, 1, 8), (1, 1, 1), (5, 1, 1), (3, 2, 8)])
@pytest.mark.parametrize("size", [(112, 112), (7, 7), (13, 10), (28, 29)])
def test_conv2d_same_matches_tensorflow_padding(kernel: int, stride: int, groups: int, size: tuple[int, int]) -> None:
    from dnsvr.backbones._layers import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(8, 16, kernel, stride=stride, groups=groups, bias=True)
    x = torch.randn(2, 8, *size)
    # TF "same": output ceil(size / stride), total padding split as (p // 2, p - p // 2)
    pads = []
    for n in size:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads.append((total // 2, total - total // 2))
    ref = F.conv2d(F.pad(x, (*pads[1], *pads[0])), conv.weight, conv.bias, stride, 0, 1, groups)
    with torch.inference_mode():
        out = conv(x)
        again = conv(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape == (2, 16, -(-size[0] // stride), -(-size[1] // stride))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    # the derived kernel follows in-place weight changes (e.g. batch-norm folding)
    with torch.no_grad():
        conv.weight.mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), 2 * (ref - conv.bias.view(1, -1, 1, 1)) + conv.bias.view(1, -1, 1, 1),
                                   atol=1e-4, rtol=1e-4)


def test_resnet50_default_weights_come_from_the_registry_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from dnsvr.weights import WeightsUnavailableError

    monkeypatch.setenv("DNSVR_OFFLINE", "1")
    monkeypatch.setenv("DNSVR_CACHE", str(tmp_path))
    monkeypatch.delenv("DNSVR_WEIGHTS_MIRROR", raising=False)
    with pytest.raises(WeightsUnavailableError, match="resnet50-0676ba61.pth"):
        FeatureExtractor("resnet50")
    # an explicit state dict in torchvision layout is accepted as it is
    sd = ResNet50().state_dict()
    ex = FeatureExtractor("resnet50", weights=sd)
    assert ex.weights_source == "state_dict"


@pytest.mark.parametrize("size", [(61, 97), (17, 23), (1, 1)])
def test_extractor_any_frame_size(size: tuple[int, int]) -> None:
    ex = FeatureExtractor("efficientnet_lite0")
    out = ex(np.random.default_rng(0).integers(0, 256, size=(2, *size, 3), dtype=np.uint8))
    assert out.shape == (2, 9, 1456) and bool(torch.isfinite(out).all())
