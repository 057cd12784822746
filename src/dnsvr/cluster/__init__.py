"""Scale-out on Ray: distributed extraction (:mod:`dnsvr.cluster.extract`) and one actor per shard for
the search of a sharded index (:mod:`dnsvr.cluster.search`).

Optional: ``pip install 'dnsvr[ray]'``. Nothing here is imported by the single-machine path; the
index and the CLI import these modules only when ``ray=`` / ``--ray`` asks for a cluster.
"""

from __future__ import annotations

from dnsvr.cluster._ray import ClusterError, connect

__all__ = ["ClusterError", "connect"]
