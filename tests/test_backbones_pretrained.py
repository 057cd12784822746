"""EfficientNet-Lite0 really is pretrained and correctly preprocessed: it recognises scikit-image's test photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnsvr.backbones import FeatureExtractor

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) is needed for the test photos")


def _resize_crop(image: np.ndarray, short_side: int, crop: int) -> np.ndarray:
    """The evaluation transform of the weights: resize the short side (bicubic, antialiased), centre-crop."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    s = short_side / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = x[..., top:top + crop, left:left + crop].clamp(0, 255).round().to(torch.uint8)
    return x[0].permute(1, 2, 0).numpy()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,classes",
    [
        ("chelsea", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_lite0_classifies_test_photos(name: str, classes: set[int]) -> None:
    ex = FeatureExtractor("efficientnet_lite0")
    pre = ex.preprocessing
    frame = _resize_crop(getattr(skimage_data, name)(), pre["resize_short_side"], pre["crop"])
    with torch.inference_mode():
        logits = ex.net(ex.normalize(frame[None]))
    probs = logits.softmax(-1)[0]
    top = int(probs.argmax())
    assert top in classes, f"{name}: top-1 class {top} (p={probs[top]:.2f}) not in {sorted(classes)}"
    assert float(probs[sorted(classes)].sum()) > 0.5
