"""IndexStore under faults and load: kill -9 mid-add, a reader during a writer, a second writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dnsvr.index import IndexConfig, IndexLockedError, IndexStore

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Deterministic record generator shared by the child processes and the checks here.
GEN = textwrap.dedent(
    """
    import numpy as np
    from dnsvr.index import IndexRecord

    def make_record(i):
        rng = np.random.default_rng(1000 + i)
        t = int(rng.integers(20, 120))
        fine = rng.integers(0, 256, (t, 9, 64), dtype=np.uint8)
        coarse = rng.standard_normal(64).astype(np.float32)
        return IndexRecord(f"v{i:05d}", coarse, fine, float(rng.random()),
                           {"timestamps": np.arange(t) * 1.0, "source": f"/v/{i}.mp4"})
    """
)
ns: dict = {}
exec(GEN, ns)  # noqa: S102 - test-local code, shared verbatim with the child process
make_record = ns["make_record"]

WRITER = GEN + textwrap.dedent(
    """
    import sys
    from dnsvr.index import IndexStore
    directory, start, stop, per_add = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = IndexStore.open(directory)
    print("open", flush=True)
    for i in range(start, stop, per_add):
        ids = list(range(i, min(i + per_add, stop)))
        store.add([make_record(j) for j in ids])
        print("committed", " ".join(str(j) for j in ids), flush=True)
    store.close()
    print("done", flush=True)
    """
)


def config() -> IndexConfig:
    return IndexConfig.binary(dims=512, coarse_dim=64, shard_bytes=2_000_000)


def spawn_writer(directory: Path, start: int, stop: int, per_add: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(start), str(stop), str(per_add)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def check_exact(store: IndexStore, ids: list[str]) -> None:
    fine = store.fine(ids)
    coarse = store.coarse_vectors(ids)
    for vid, f, c in zip(ids, fine, coarse):
        rec = make_record(int(vid[1:]))
        np.testing.assert_array_equal(f, rec.fine, err_msg=vid)
        np.testing.assert_array_equal(c, rec.coarse, err_msg=vid)


@pytest.mark.slow
def test_kill9_mid_add_keeps_every_committed_video(tmp_path: Path) -> None:
    d = tmp_path / "idx"
    IndexStore.create(d, config()).close()
    rng = np.random.default_rng(0)
    committed: list[int] = []
    next_id = 0
    for round_ in range(4):
        proc = spawn_writer(d, next_id, next_id + 10_000, per_add=int(rng.integers(1, 6)))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open", proc.stderr.read() if proc.stderr else ""
        want = int(rng.integers(3, 15))
        seen = 0
        while seen < want:
            line = proc.stdout.readline()
            assert line.startswith("committed"), line + (proc.stderr.read() if proc.stderr else "")
            committed += [int(x) for x in line.split()[1:]]
            seen += 1
        # kill at a random moment inside the following adds (shard write, fsync or SQLite commit)
        time.sleep(float(rng.uniform(0.0, 0.05)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        out, _ = proc.communicate()
        for line in out.splitlines():  # adds that completed between our last read and the kill
            if line.startswith("committed"):
                committed += [int(x) for x in line.split()[1:]]
        with IndexStore.open(d, readonly=True) as reader:  # opens and verifies before any writer repairs it
            report = reader.verify()
            assert report.ok, report.problems
            present = reader.ids()
        want_ids = [f"v{i:05d}" for i in committed]
        assert set(want_ids) <= set(present)
        # a video may be committed without its "committed" line having been printed: it must be whole
        extra = sorted(set(present) - set(want_ids))
        assert len(extra) <= 5
        with IndexStore.open(d) as writer:  # the lock of the killed writer is gone; recovery truncates
            assert writer.verify().ok and not writer.verify().notes
            check_exact(writer, present)
        committed = sorted(int(v[1:]) for v in present)
        next_id = (max(committed) + 1) if committed else 0
    assert len(committed) >= 4 * 3


@pytest.mark.slow
def test_reader_during_writer_sees_only_committed(tmp_path: Path) -> None:
    d = tmp_path / "idx"
    IndexStore.create(d, config()).close()
    proc = spawn_writer(d, 0, 60, per_add=3)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with IndexStore.open(d, readonly=True) as reader:
            checked = 0
            sizes = []
            q = make_record(0).coarse
            while True:
                ids = reader.ids()
                sizes.append(len(ids))
                if ids:
                    check_exact(reader, ids[-3:])  # newest videos, maybe in a freshly grown shard
                    hits = reader.coarse_search(q, k=5)
                    assert hits.ids[0, 0] == "v00000"
                    checked += 1
                if len(ids) == 60:
                    break
                if proc.poll() is not None and len(reader.ids()) < 60:
                    pytest.fail(f"writer exited early: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.01)
            assert sizes == sorted(sizes)  # never goes back
            assert len(set(sizes)) > 2 and checked > 2  # it really read while the writer wrote
            check_exact(reader, reader.ids())
            assert reader.verify().ok
    finally:
        proc.wait(timeout=60)


@pytest.mark.slow
def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "idx"
    IndexStore.create(d, config()).close()
    with IndexStore.open(d) as writer:
        writer.add([make_record(0)])
        proc = spawn_writer(d, 1, 3, per_add=1)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "IndexLockedError" in err and f"pid {os.getpid()}" in err
        assert writer.ids() == ["v00000"]
    proc = spawn_writer(d, 1, 3, per_add=1)  # lock released: now it works
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with IndexStore.open(d, readonly=True) as reader:
        assert reader.ids() == ["v00000", "v00001", "v00002"]
    with pytest.raises(IndexLockedError):
        with IndexStore.open(d):
            IndexStore.open(d)


COMPACTOR = GEN + textwrap.dedent(
    """
    import sys
    from dnsvr.index import IndexStore
    directory, rounds = sys.argv[1], int(sys.argv[2])
    store = IndexStore.open(directory)
    print("open", flush=True)
    op = 0
    for r in range(rounds):
        store.add([make_record(j) for j in range(5 * r, 5 * r + 5)])
        op += 1
        print(op, flush=True)
        store.remove([f"v{j:05d}" for j in range(5 * r, 5 * r + 2)])
        op += 1
        print(op, flush=True)
        store.compact()
        op += 1
        print(op, flush=True)
    """
)


def compactor_states(rounds: int) -> list[set[str]]:
    """The active set after each operation of COMPACTOR (index 0: before any)."""
    states: list[set[str]] = [set()]
    active: set[str] = set()
    for r in range(rounds):
        active = active | {f"v{j:05d}" for j in range(5 * r, 5 * r + 5)}
        states.append(set(active))
        active = active - {f"v{j:05d}" for j in range(5 * r, 5 * r + 2)}
        states.append(set(active))
        states.append(set(active))
    return states


@pytest.mark.slow
def test_kill9_during_remove_and_compact(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rounds = 200
    states = compactor_states(rounds)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for trial in range(3):
        d = tmp_path / f"idx{trial}"
        IndexStore.create(d, IndexConfig.binary(dims=512, coarse_dim=64, shard_bytes=300_000)).close()
        proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(d), str(rounds)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        last = 0
        for _ in range(int(rng.integers(6, 30))):
            last = int(proc.stdout.readline())
        time.sleep(float(rng.uniform(0.0, 0.03)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        out, _ = proc.communicate()
        done = [int(x) for x in out.split()]
        last = max([last, *done])
        with IndexStore.open(d, readonly=True) as reader:
            report = reader.verify()
            assert report.ok, report.problems
            present = set(reader.ids())
        assert present in (states[last], states[last + 1]), (last, sorted(present ^ states[last]))
        with IndexStore.open(d) as writer:  # recovery deletes the half-written compaction, if any
            assert writer.verify().ok
            check_exact(writer, sorted(present))
            names = {f for f, _ in writer._cat.shard_files.values()}
            assert {p.name for p in (d / "shards").iterdir()} == names


@pytest.mark.slow
def test_reader_during_remove_and_compact(tmp_path: Path) -> None:
    d = tmp_path / "idx"
    IndexStore.create(d, IndexConfig.binary(dims=512, coarse_dim=64, shard_bytes=300_000)).close()
    rounds = 12
    states = compactor_states(rounds)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(d), str(rounds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        reads = 0
        with IndexStore.open(d, readonly=True) as reader:
            while proc.poll() is None or reads == 0:
                with reader.snapshot():  # one committed state for several calls, whatever the writer does
                    ids = reader.ids()
                    assert set(ids) in states  # always a committed state, never a half-done one
                    if ids:
                        check_exact(reader, ids)  # shards deleted by a compaction meanwhile stay mapped
                        hits = reader.coarse_search(make_record(int(ids[0][1:])).coarse, k=3)
                        assert hits.ids[0, 0] == ids[0]
                reads += 1
            assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
            assert set(reader.ids()) == states[-1]
            check_exact(reader, reader.ids())
            assert reader.verify().ok
        assert reads > 3
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
