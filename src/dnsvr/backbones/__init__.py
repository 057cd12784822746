"""Backbones and region features: frames → L3-iMAC region vectors [N, 9, D] → PCA whitening.

- :func:`l3_imac` — four stage outputs → [N, 9, C] region vectors (the ViSiL/DnS reference pooling).
- :class:`PCAWhitening` — the published {mean, V, d} whitening, or fitted (incrementally) on your features.
- :class:`FeatureExtractor` — uint8 RGB frames → region features with the preprocessing of the weights.
- :class:`ResNet50` (torchvision parameter names) and :class:`EfficientNetLite0` (packaged ImageNet weights).
"""

from __future__ import annotations

from dnsvr.backbones._int8 import INT8_BACKBONES
from dnsvr.backbones.efficientnet import (
    EFFICIENTNET_LITE0_PREPROCESSING,
    EfficientNetLite0,
    default_lite0_weights,
    efficientnet_lite0,
)
from dnsvr.backbones.extractor import BACKBONES, PRECISIONS, FeatureExtractor
from dnsvr.backbones.regions import l3_imac, region_pooling_params
from dnsvr.backbones.resnet import RESNET50_PREPROCESSING, ResNet50, resnet50
from dnsvr.backbones.whitening import PCAWhitening

__all__ = [
    "BACKBONES",
    "EFFICIENTNET_LITE0_PREPROCESSING",
    "RESNET50_PREPROCESSING",
    "EfficientNetLite0",
    "FeatureExtractor",
    "INT8_BACKBONES",
    "PRECISIONS",
    "PCAWhitening",
    "ResNet50",
    "default_lite0_weights",
    "efficientnet_lite0",
    "l3_imac",
    "region_pooling_params",
    "resnet50",
]
