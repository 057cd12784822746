"""One Ray actor per shard: the search of a sharded index, fanned out over a cluster.

Each :class:`ShardActor` opens its shard read-only (the fine features memory-mapped, searches never
write) and answers the calls of :class:`dnsvr.index.query.Shard`; :class:`RayShardGroup` sends a
query stage to every actor at once and gathers the answers for :func:`dnsvr.index.query.search_shards`,
which does the merging — so the result is the one of a single index.

Faults: an actor that dies is restarted by Ray (``max_restarts``) and the call is sent again, up to
``retries`` times; an actor that cannot be (re)started or does not answer within ``timeout`` makes
its shard unavailable (:class:`~dnsvr.index.query.ShardUnavailableError`: the query fails, or with
``allow_partial`` its results name the missing shard).

The actors open the shard folders by path: every node that runs one must see the index directory
(a shared file system, or a copy of the shard at the same path).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.bundle import DEFAULT_MATCH, FineMatches
from dnsvr.cluster._ray import connect, require_ray
from dnsvr.index.query import Candidates, LocalShard, ShardUnavailableError
from dnsvr.search import Segment

logger = logging.getLogger(__name__)

ray = require_ray()


@ray.remote(max_restarts=4, max_task_retries=0)
class ShardActor:
    """Holds one shard open, read-only (fine features memory-mapped), and answers query stages."""

    def __init__(self, shard_dir: str, bundle_dir: str, name: str) -> None:
        from dnsvr.bundle import Bundle
        from dnsvr.index.video_index import VideoIndex

        self.index = VideoIndex.open(shard_dir, readonly=True)
        bundle = Bundle.load(bundle_dir)
        if self.index.store is not None and self.index.bundle.identity() != bundle.identity():
            raise ValueError(f"shard {name!r} was built with bundle {self.index.bundle.identity()}, the index with "
                             f"{bundle.identity()}")
        self.shard = LocalShard(name, self.index.store, bundle)

    def pid(self) -> int:
        return os.getpid()

    def candidates(self, coarse: np.ndarray, k: int | None, with_selector: bool) -> Candidates:
        return self.shard.candidates(coarse, k, with_selector)

    def fine_scores(self, fine: np.ndarray, ids: Sequence[str], precision: str, inset: np.ndarray | None = None,
                    match: str = DEFAULT_MATCH) -> FineMatches:
        return self.shard.fine_scores(fine, ids, precision, inset, match)

    def segments(self, fine: np.ndarray, timestamps: np.ndarray | None, ids: Sequence[str],
                 precision: str) -> list[list[Segment]]:
        return self.shard.segments(fine, timestamps, ids, precision)


class RayShardGroup:
    """The shards of a sharded index as Ray actors (see the module docstring).

    Args:
        directory: the sharded index (each shard is ``directory / name``).
        names: the shard names, in the index's order.
        address: the cluster (see :func:`dnsvr.cluster.connect`).
        retries: times a call is sent again after its actor died.
        timeout: seconds to wait for one answer (None: no limit) before the shard counts as unavailable.
        restart_wait: seconds to wait, in all, for a dead actor to come back.
        num_cpus: CPUs Ray reserves for each actor (0 by default: a shard actor mostly waits, and its memory,
            not its CPU, is what sizes a node; see docs/scale-out.md).
    """

    def __init__(self, directory: str | Path, names: Sequence[str], *, address: str | None = "auto",
                 retries: int = 3, timeout: float | None = 300.0, restart_wait: float = 60.0,
                 num_cpus: float = 0.0) -> None:
        connect(address)
        directory = Path(directory).resolve()
        self.names = list(names)
        self.retries = int(retries)
        self.timeout = timeout
        self.restart_wait = float(restart_wait)
        self.actors = [ShardActor.options(num_cpus=num_cpus).remote(str(directory / n), str(directory / "bundle"), n)
                       for n in self.names]

    def call(self, method: str, args: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """Send ``method(*args[i])`` to every actor ``i`` at once; answers (or ShardUnavailableError) by shard."""
        refs = {i: getattr(self.actors[i], method).remote(*a) for i, a in args.items()}
        return {i: self._get(i, ref, method, args[i]) for i, ref in refs.items()}

    def _get(self, i: int, ref: Any, method: str, args: tuple[Any, ...]) -> Any:
        errors = ray.exceptions
        deaths = 0
        deadline = time.monotonic() + self.restart_wait
        delay = 0.1
        while True:
            try:
                return ray.get(ref, timeout=self.timeout)
            except errors.GetTimeoutError:
                ray.cancel(ref, force=False)
                return ShardUnavailableError(self.names[i], f"no answer to {method} within {self.timeout} s")
            except errors.ActorUnavailableError as exc:  # restarting (or unreachable for now): wait, send again
                if time.monotonic() > deadline:
                    return ShardUnavailableError(self.names[i], f"its actor did not come back: {exc}")
            except errors.RayActorError as exc:  # died during the call (Ray restarts it) or cannot start
                deaths += 1
                if deaths > self.retries or time.monotonic() > deadline:
                    return ShardUnavailableError(self.names[i], f"its actor could not be restarted: {exc}")
                logger.warning("shard %s: actor lost during %s; sending the call again (%d/%d)", self.names[i],
                               method, deaths, self.retries)
            except errors.RayTaskError as exc:  # the shard itself failed (unreadable files...)
                return ShardUnavailableError(self.names[i], str(exc.cause if exc.cause is not None else exc))
            time.sleep(delay)
            delay = min(2.0, delay * 2)
            ref = getattr(self.actors[i], method).remote(*args)

    def pids(self) -> list[int]:
        """The actors' process ids (for tests and diagnostics)."""
        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Stop the actors."""
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
