"""Reference-compatible DnS / ViSiL networks.

Drop-in for the reference code (mever-team/distill-and-select, MKLab-ITI/visil): same parameter names, shapes
and method names, so published checkpoints load with ``strict=True``::

    from dnsvr.nn import FineGrainedStudent, CoarseGrainedStudent, SelectorNetwork, ViSiLTeacher

Training-free building blocks (used by the ``lite`` profile) are in :mod:`dnsvr.nn.similarity`.
"""

from __future__ import annotations

from dnsvr.nn.layers import (
    Attention,
    BinarizationLayer,
    NetVLAD,
    SimilarityRegularizationLoss,
    VideoComparator,
    VideoComperator,
)
from dnsvr.nn.selector import MetadataModel, SelectorNetwork
from dnsvr.nn.similarity import ChamferSimilarity, chamfer_similarity, chamfer_video_similarity
from dnsvr.nn.students import CoarseGrainedStudent, FineGrainedStudent
from dnsvr.nn.teacher import ViSiLHead, ViSiLTeacher

__all__ = [
    "Attention",
    "BinarizationLayer",
    "ChamferSimilarity",
    "CoarseGrainedStudent",
    "FineGrainedStudent",
    "MetadataModel",
    "NetVLAD",
    "SelectorNetwork",
    "SimilarityRegularizationLoss",
    "ViSiLHead",
    "ViSiLTeacher",
    "VideoComparator",
    "VideoComperator",
    "chamfer_similarity",
    "chamfer_video_similarity",
]
