"""Connecting to Ray (lazily imported: Ray is an optional extra)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dnsvr.index.video_index import VideoIndexError

logger = logging.getLogger(__name__)

#: ``ray=`` values that start a cluster on this machine instead of joining one.
LOCAL = ("local",)


class ClusterError(VideoIndexError):
    """Ray is missing, or the cluster cannot be reached."""


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ClusterError` that says how to install it."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise ClusterError("Ray is not installed: pip install 'dnsvr[ray]'") from None
    return ray


def package_root() -> str:
    """The folder that holds the ``dnsvr`` package this process runs (what workers on this machine import)."""
    return str(Path(__file__).resolve().parents[2])


def worker_env() -> dict[str, Any] | None:
    """The runtime environment for this driver's workers: run from a source checkout (not an installed
    package), they are pointed at it so that they import this very dnsvr; None otherwise."""
    root = package_root()
    if "site-packages" in root or "dist-packages" in root:
        return None
    path = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}}


def connect(address: str | None = "auto") -> Any:
    """Join a Ray cluster (or reuse the one this process is connected to) and return the ``ray`` module.

    Args:
        address: ``"auto"`` (the cluster this machine belongs to), ``"local"`` (start one here, as many
            workers as CPUs), or an address (``"ray://head:10001"``, ``"10.0.0.1:6379"``).

    Raises:
        ClusterError: Ray is missing or the cluster cannot be reached.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    try:
        if address is None or address in LOCAL:
            ray.init(include_dashboard=False, runtime_env=worker_env(), log_to_driver=False)
        else:
            ray.init(address=address, runtime_env=worker_env(), log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster {address!r}: {exc}") from None
    logger.info("connected to Ray: %s", ray.cluster_resources())
    return ray
