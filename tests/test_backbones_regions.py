"""L3-iMAC region pooling, preprocessing and PCA whitening against the reference outputs (golden/models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnsvr.backbones import FeatureExtractor, PCAWhitening, l3_imac, region_pooling_params


@pytest.fixture(scope="module")
def golden(golden_models: Path) -> dict[str, np.ndarray]:
    with np.load(golden_models / "feature_extractor.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_reference_windows() -> None:
    # the reference's (kernel, stride) per ResNet-50 stage at 224x224
    assert region_pooling_params(56) == (28, 14)
    assert region_pooling_params(28) == (14, 7)
    assert region_pooling_params(14) == (6, 3)
    assert region_pooling_params(7) == (3, 2)
    for size in range(11, 400):
        k, s = region_pooling_params(size)
        assert (size - k) // s + 1 == 3 and 2 * k <= size
    # no such window: l3_imac falls back to adaptive max pooling
    assert [size for size in range(1, 11) if region_pooling_params(size) is None] == [1, 2, 5, 6, 10]


def test_l3_imac_matches_reference(golden: dict[str, np.ndarray]) -> None:
    maps = [torch.from_numpy(golden[f"in/layer{i}"]) for i in range(1, 5)]
    out = l3_imac(maps).numpy()
    expected = golden["out/regions_3840"]
    assert out.shape == expected.shape == (1, 9, 3840)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_l3_imac_channels_last_and_batch(golden: dict[str, np.ndarray]) -> None:
    maps = [torch.from_numpy(golden[f"in/layer{i}"]) for i in range(1, 5)]
    batch = [torch.cat([m, m.flip(-1)]).contiguous(memory_format=torch.channels_last) for m in maps]
    out = l3_imac(batch).numpy()
    np.testing.assert_allclose(out[0], golden["out/regions_3840"][0], atol=1e-5, rtol=0)
    assert not np.allclose(out[1], out[0], atol=1e-3)  # the flipped frame differs
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_l3_imac_small_and_odd_maps() -> None:
    out = l3_imac([torch.rand(2, 8, 2, 2), torch.rand(2, 4, 9, 13), torch.rand(2, 2, 5, 6)])
    assert out.shape == (2, 9, 14)
    with pytest.raises(ValueError, match="one batch size"):
        l3_imac([torch.rand(2, 8, 7, 7), torch.rand(3, 8, 7, 7)])
    with pytest.raises(ValueError):
        l3_imac([])


def test_preprocessing_matches_reference(golden: dict[str, np.ndarray]) -> None:
    ex = FeatureExtractor("resnet50", weights="random")
    x = ex.normalize(golden["in/frames"])
    assert x.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(x.numpy(), golden["out/normalized"], atol=1e-5, rtol=0)
    # the same from a torch tensor
    np.testing.assert_allclose(ex.normalize(torch.from_numpy(golden["in/frames"])).numpy(),
                               golden["out/normalized"], atol=1e-5, rtol=0)


def test_whitening_matches_reference(golden: dict[str, np.ndarray]) -> None:
    white = PCAWhitening(golden["in/pca_mean"], golden["in/pca_V"], golden["in/pca_d"], dims=512)
    regions = torch.from_numpy(golden["out/regions_3840"])
    before = regions.clone()
    out = white(regions).numpy()
    assert torch.equal(regions, before)  # not modified in place (the reference subtracts in place)
    assert out.shape == (1, 9, 512)
    np.testing.assert_allclose(out, golden["out/whitened_512"], atol=1e-5, rtol=0)


def test_whitening_from_file_pth_and_npz(golden: dict[str, np.ndarray], tmp_path: Path) -> None:
    arrays = {k: golden[f"in/pca_{k}"] for k in ("mean", "V", "d")}
    pth = tmp_path / "pca.pth"
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, pth)  # the published layout
    npz = tmp_path / "pca.npz"
    np.savez(npz, **arrays)
    regions = torch.from_numpy(golden["out/regions_3840"])
    for path in (pth, npz):
        white = PCAWhitening.from_file(path)
        assert white.dims == 512 and white.input_dims == 3840
        np.testing.assert_allclose(white(regions).numpy(), golden["out/whitened_512"], atol=1e-5, rtol=0)
    assert PCAWhitening.from_file(pth).identity == PCAWhitening.from_file(npz).identity
    assert PCAWhitening.from_file(npz, dims=256).identity != PCAWhitening.from_file(npz).identity
    assert PCAWhitening.from_file(npz, dims=64)(regions).shape == (1, 9, 64)


def test_whitening_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PCAWhitening.from_file(tmp_path / "missing.pth")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=np.zeros(4), V=np.eye(4))
    with pytest.raises(ValueError, match="lacks"):
        PCAWhitening.from_file(bad)
    with pytest.raises(ValueError, match="shapes disagree"):
        PCAWhitening(np.zeros(4), np.eye(3), np.ones(3), dims=2)
    with pytest.raises(ValueError, match="cannot keep"):
        PCAWhitening(np.zeros(4), np.eye(4), np.ones(4), dims=5)


def test_normalize_leaves_float_input_untouched() -> None:
    ex = FeatureExtractor("resnet50", weights="random")
    frames = torch.randint(0, 256, (2, 32, 32, 3)).float()
    before = frames.clone()
    x = ex.normalize(frames)
    assert torch.equal(frames, before)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = (before.permute(0, 3, 1, 2) / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
