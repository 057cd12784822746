"""dnsvr: DnS (Distill-and-Select) content-based video retrieval at scale.

The front door (names load on first use, so ``import dnsvr`` stays cheap)::

    >>> import dnsvr
    >>> index = dnsvr.VideoIndex.create("my.index")            # the lite bundle: offline
    >>> index.add(["videos/"])                                  # files, folders, list files, .h5
    >>> hits = index.search(["query.mp4"], top_k=5)[0].results  # best first
    >>> [(h.video_id, round(h.score, 3), h.source, h.segments) for h in hits]

The parts, one per module (see DESIGN.md for the layout): ``dnsvr.video`` (decoding),
``dnsvr.backbones`` (feature networks), ``dnsvr.extract`` (videos → features),
``dnsvr.bundle`` (models), ``dnsvr.index`` (the persistent index), ``dnsvr.search`` (the DnS
query), ``dnsvr.nn`` (networks), ``dnsvr.eval`` (benchmarks), ``dnsvr.train`` (distillation).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "VideoIndex": "dnsvr.index.video_index",
    "VideoIndexError": "dnsvr.index.video_index",
    "AddReport": "dnsvr.index.video_index",
    "open_index": "dnsvr.index.video_index",
    "Bundle": "dnsvr.bundle",
    "BundleError": "dnsvr.bundle",
    "load_bundle": "dnsvr.bundle",
    "Budget": "dnsvr.search",
    "QueryResults": "dnsvr.search",
    "SearchResult": "dnsvr.search",
    "Segment": "dnsvr.search",
    "extract_videos": "dnsvr.extract",
    "iter_video_features": "dnsvr.extract",
    "resolve_inputs": "dnsvr.extract",
    "FeatureExtractor": "dnsvr.backbones",
    "FeatureFile": "dnsvr.features",
    "FeatureWriter": "dnsvr.features",
    "VideoFeatures": "dnsvr.features",
    "WeightsUnavailableError": "dnsvr.weights",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dnsvr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from dnsvr.backbones import FeatureExtractor
    from dnsvr.bundle import Bundle, BundleError, load_bundle
    from dnsvr.extract import extract_videos, iter_video_features, resolve_inputs
    from dnsvr.features import FeatureFile, FeatureWriter, VideoFeatures
    from dnsvr.index.video_index import AddReport, VideoIndex, VideoIndexError, open_index
    from dnsvr.search import Budget, QueryResults, SearchResult, Segment
    from dnsvr.weights import WeightsUnavailableError
