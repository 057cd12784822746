"""Evaluation on the public video-retrieval benchmarks with the reference protocols.

Example:
    >>> from dnsvr.eval import evaluate
    >>> evaluate("FIVR-5K", "similarities.json.gz")     # doctest: +SKIP
    {'DSVR': ..., 'CSVR': ..., 'ISVR': ..., 'DAVR': ...}
"""

from __future__ import annotations

from dnsvr.eval.benchmarks import (
    BENCHMARKS,
    CCWebVideo,
    CustomBenchmark,
    EVVE,
    FIVR,
    SVD,
    Benchmark,
    EvaluationResult,
    evaluate,
    get_benchmark,
    load_annotation,
)
from dnsvr.eval.metrics import average_precision, rank_order, step_average_precision, trapezoid_average_precision
from dnsvr.eval.similarities import (
    SimilarityFileError,
    SimilarityTable,
    load_similarities,
    save_similarities,
)

__all__ = [
    "BENCHMARKS", "Benchmark", "CCWebVideo", "CustomBenchmark", "EVVE", "EvaluationResult", "FIVR", "SVD",
    "SimilarityFileError", "SimilarityTable", "average_precision", "evaluate", "get_benchmark", "load_annotation",
    "load_similarities", "rank_order", "save_similarities", "step_average_precision",
    "trapezoid_average_precision",
]
