"""Fault injection: a tampered or damaged index folder, hostile inputs, every command.

A small ``lite`` index (whitening fitted, derived coarse files and catalog saved) is copied and
damaged in one way per case: each metadata field of ``meta.sqlite`` set to hostile values (names
leading outside with ``..``, absolute paths, out-of-range numbers, wrong types), each JSON field
likewise, and each file of the folder truncated, bit-flipped, replaced by a symlink to a file
outside, or by a FIFO. Then every ``dnsvr index``/``search`` command runs on it and must end
with exit status 0 (or 1 where the command reports damage or skipped inputs), or 2 with one
line ``error: ...`` — never a traceback, never a hang — and no file outside the index folder
may change (a canary tree's hashes and mtimes are compared). ``-m slow`` runs every mutation;
the default run takes a fixed sample of each kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from dnsvr.cli import app
from dnsvr.index.video_index import VideoIndex

runner = CliRunner()
C = 48  # raw region size of the generated features (the lite whitening keeps all 48)
T = 8
_COMMANDS: dict[int, object] = {}


def _invoke(argv: list[str]):  # noqa: ANN202 - click's Result
    """``runner.invoke(app, argv)`` without rebuilding the click command each time (most of its cost)."""
    from unittest import mock

    import typer.testing

    original = typer.testing._get_command

    def cached(a):  # noqa: ANN001, ANN202
        if id(a) not in _COMMANDS:
            _COMMANDS[id(a)] = original(a)
        return _COMMANDS[id(a)]

    with mock.patch.object(typer.testing, "_get_command", cached):
        return runner.invoke(app, argv)


# ----------------------------------------------------------------------------------------------
# fixtures: a template index and a canary tree
def _features(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 2 + 1, T, 9, C)).astype(np.float32)
    out = {}
    for i in range(n):
        out[f"v{seed}_{i:02d}"] = (base[i // 2] + 0.3 * rng.standard_normal((T, 9, C))).astype(np.float32)
    return out


def _write_h5(path: Path, videos: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for vid, x in videos.items():
            f.create_dataset(vid, data=x)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    h5 = _write_h5(root / "base.h5", _features(1, 24))
    extra = _write_h5(root / "extra.h5", _features(2, 2))
    idx = root / "template"
    with VideoIndex.create(idx, "lite") as index:
        report = index.add([h5])
        assert len(report.added) == 24 and not report.skipped
        index.remove(["v1_03"])
    return {"index": idx, "extra": extra}


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirs[:] = []
            continue
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            st = p.stat()
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size)
    return out


def _canary(tmp: Path) -> Path:
    outside = tmp / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "victim.bin").write_bytes(os.urandom(4096))
    (outside / "sub" / "victim.json").write_text(json.dumps({"keep": "me"}))
    (outside / "fine-000000.bin").write_bytes(os.urandom(100_000))  # a shard-named file outside
    return outside


# ----------------------------------------------------------------------------------------------
# mutations: each takes the copied index folder and the canary folder
Mutation = Callable[[Path, Path], None]


def _sql(statement: str, *params: object) -> Mutation:
    def mutate(idx: Path, outside: Path) -> None:
        con = sqlite3.connect(idx / "store" / "meta.sqlite")
        con.execute(statement.replace("{OUT}", str(outside)), params)
        con.commit()
        con.close()
    mutate.__name__ = statement[:60]
    return mutate


def _json_field(rel: str, keys: tuple[str, ...], value: object) -> Mutation:
    def mutate(idx: Path, outside: Path) -> None:  # noqa: D401
        path = idx / rel
        doc = json.loads(path.read_text())
        node = doc
        for k in keys[:-1]:
            node = node[k]
        v = value.replace("{OUT}", str(outside)) if isinstance(value, str) else value
        node[keys[-1]] = v
        path.write_text(json.dumps(doc))
    mutate.__name__ = f"{rel} {'.'.join(keys)}={value!r}"[:80]
    return mutate


def _coarse_field(key: str, value: object) -> Mutation:
    def mutate(idx: Path, outside: Path) -> None:
        path = idx / "store" / "coarse" / "current.json"
        doc = json.loads(path.read_text())
        doc[key] = value.replace("{OUT}", str(outside)) if isinstance(value, str) else value
        path.write_text(json.dumps(doc))
    mutate.__name__ = f"current.json {key}={value!r}"[:80]
    return mutate


def _deep_json(rel: str) -> Mutation:
    def mutate(idx: Path, outside: Path) -> None:
        (idx / rel).write_text("[" * 100_000 + "]" * 100_000)
    mutate.__name__ = f"{rel} nested 100000 deep"
    return mutate


def _file_op(rel: str, op: str) -> Mutation:
    def mutate(idx: Path, outside: Path) -> None:
        path = idx / rel
        if op == "truncate0":
            path.write_bytes(b"")
        elif op == "truncate_half":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif op.startswith("flip"):
            data = bytearray(path.read_bytes())
            if data:
                where = {"flip_start": 0, "flip_mid": len(data) // 2, "flip_end": len(data) - 1}[op]
                data[where] ^= 0x5A
                path.write_bytes(bytes(data))
        elif op == "symlink_out":
            path.unlink()
            target = outside / ("fine-000000.bin" if path.suffix == ".bin" else "victim.bin")
            path.symlink_to(target)
        elif op == "fifo":
            path.unlink()
            os.mkfifo(path)
        else:
            raise AssertionError(op)
    return mutate


def _dir_symlink(rel: str) -> Mutation:
    def mutate(idx: Path, outside: Path) -> None:
        src = idx / rel
        dst = outside / ("copy_" + src.name)
        shutil.copytree(src, dst)
        shutil.rmtree(src)
        src.symlink_to(dst)
    mutate.__name__ = f"{rel}/ -> outside"
    return mutate


def _index_files(idx: Path) -> list[str]:
    return sorted(str(p.relative_to(idx)) for p in idx.rglob("*") if p.is_file())


SQL_MUTATIONS: list[Mutation] = [
    _sql("UPDATE shards SET file = '../../../outside/victim.bin', committed = 100"),
    _sql("UPDATE shards SET file = '{OUT}/victim.bin', committed = 100"),
    _sql("UPDATE shards SET file = '../../../outside/fine-000000.bin'"),
    _sql("UPDATE shards SET file = 'fine-000000.bin/../../manifest.json'"),
    _sql("UPDATE shards SET file = ''"),
    _sql("UPDATE shards SET file = 42"),
    _sql("UPDATE shards SET file = x'2e2e2f2e2e2f'"),
    _sql("UPDATE shards SET committed = -1"),
    _sql("UPDATE shards SET committed = 100"),
    _sql("UPDATE shards SET committed = 1000000000000000"),
    _sql("UPDATE shards SET committed = 'abc'"),
    _sql("UPDATE shards SET shard = -5"),
    _sql("INSERT INTO shards(shard, file, committed) VALUES (7, '/etc/passwd', 10)"),
    _sql("UPDATE videos SET offset = -1 WHERE rowid = 2"),
    _sql("UPDATE videos SET offset = 1000000000000 WHERE rowid = 2"),
    _sql("UPDATE videos SET n_frames = 0 WHERE rowid = 2"),
    _sql("UPDATE videos SET n_frames = 1000000000 WHERE rowid = 2"),
    _sql("UPDATE videos SET n_frames = 'x' WHERE rowid = 2"),
    _sql("UPDATE videos SET shard = 99 WHERE rowid = 2"),
    _sql("UPDATE videos SET crc32 = 0"),
    _sql("UPDATE videos SET crc32 = -7 WHERE rowid = 2"),
    _sql("UPDATE videos SET video_id = 'a' || char(10) || 'b' WHERE rowid = 2"),
    _sql("UPDATE videos SET video_id = x'00ff' WHERE rowid = 3"),
    _sql("UPDATE videos SET ts_blob = x'0102' WHERE rowid = 2"),
    _sql("UPDATE videos SET ts_start = 'abc', ts_step = 'x' WHERE rowid = 2"),
    _sql("UPDATE videos SET selector = 'high' WHERE rowid = 2"),
    _sql("UPDATE videos SET meta = '{{{{' "),
    _sql("UPDATE videos SET meta = '[1, 2]' WHERE rowid = 2"),
    _sql("UPDATE videos SET source = '../../../outside/victim.bin'"),
    _sql("UPDATE coarse SET vector = x'0102' WHERE video_row = 2"),
    _sql("UPDATE coarse SET vector = 3.5 WHERE video_row = 2"),
    _sql("DELETE FROM coarse WHERE video_row = 4"),
    _sql("UPDATE state SET value = 'abc' WHERE key = 'generation'"),
    _sql("UPDATE state SET value = -4 WHERE key = 'epoch'"),
    _sql("DELETE FROM state"),
    _sql("UPDATE attrs SET value = '{{' "),
    _sql("INSERT OR REPLACE INTO attrs(key, value) VALUES ('x', '{{')"),
    _sql("DROP TABLE shards"),
    _sql("DROP INDEX videos_active_id"),
]

JSON_MUTATIONS: list[Mutation] = [
    _json_field("index.json", ("format_version",), -1),
    _json_field("index.json", ("format_version",), "1"),
    _json_field("index.json", ("format_version",), 99),
    _json_field("index.json", ("coarse_index",), ["../x"]),
    _json_field("index.json", ("format",), None),
    _json_field("store/manifest.json", ("config", "fine_shape"), [9, -32]),
    _json_field("store/manifest.json", ("config", "fine_shape"), [9, 10**12]),
    _json_field("store/manifest.json", ("config", "fine_shape"), 9),
    _json_field("store/manifest.json", ("config", "coarse_dim"), -5),
    _json_field("store/manifest.json", ("config", "coarse_dim"), 10**12),
    _json_field("store/manifest.json", ("config", "coarse_dim"), "48"),
    _json_field("store/manifest.json", ("config", "fine_dtype"), "object"),
    _json_field("store/manifest.json", ("config", "shard_bytes"), 0),
    _json_field("store/manifest.json", ("config", "coarse_index"), "IVF99999999,PQ3"),
    _json_field("store/manifest.json", ("config",), "x"),
    _json_field("store/manifest.json", ("format_version",), -1),
    _json_field("bundle/bundle.json", ("whitening", "dims"), -5),
    _json_field("bundle/bundle.json", ("whitening", "dims"), 10**12),
    _json_field("bundle/bundle.json", ("whitening",), "x"),
    _json_field("bundle/bundle.json", ("coarse",), {"type": "student", "args": {"dims": 10**9}}),
    _json_field("bundle/bundle.json", ("coarse",), {"type": "student", "args": {"dims": 48, "netvlad_outdims": 4096}}),
    _json_field("bundle/bundle.json", ("fine",), {"type": "att", "args": {"dims": -3}}),
    _json_field("bundle/bundle.json", ("fine",), {"type": "bogus"}),
    _json_field("bundle/bundle.json", ("format_version",), "one"),
    _coarse_field("vectors", "../../../outside/victim.bin"),
    _coarse_field("rowids", "{OUT}/victim.bin"),
    _coarse_field("vectors", "g1.vectors.f32/../../../../outside/victim.bin"),
    _coarse_field("ann", {"spec": "HNSW32", "index": "../../../outside/victim.bin", "rowids": "/etc/passwd"}),
    _coarse_field("dim", "x"),
    _deep_json("index.json"),
    _deep_json("bundle/bundle.json"),
    _deep_json("store/manifest.json"),
    _deep_json("store/coarse/current.json"),
    _dir_symlink("store/shards"),
    _dir_symlink("store/coarse"),
    _dir_symlink("bundle"),
    _dir_symlink("store"),
]
FILE_OPS = ("truncate0", "truncate_half", "flip_start", "flip_mid", "flip_end", "symlink_out", "fifo")


def _whitening_mutations() -> list[Mutation]:
    def huge_header(idx: Path, outside: Path) -> None:
        path = idx / "bundle" / "whitening.safetensors"
        data = bytearray(path.read_bytes())
        data[:8] = (1 << 40).to_bytes(8, "little")
        path.write_bytes(bytes(data))

    def wrong_shapes(idx: Path, outside: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"mean": np.zeros(5, np.float32), "V": np.zeros((7, 3), np.float32), "d": np.ones(2, np.float32)},
                  str(idx / "bundle" / "whitening.safetensors"))

    def huge_shapes(idx: Path, outside: Path) -> None:
        path = idx / "bundle" / "whitening.safetensors"
        head = json.dumps({"mean": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}}).encode()
        path.write_bytes(len(head).to_bytes(8, "little") + head + b"\0" * 64)

    return [huge_header, wrong_shapes, huge_shapes]


def _commands(idx: Path, extra: Path) -> list[tuple[list[str], set[int]]]:
    """(argv, allowed exit codes) of every command, in the order they run on one damaged copy."""
    i = str(idx)
    return [
        (["index", "list", i], {0, 2}),
        (["index", "info", i, "--json"], {0, 2}),
        (["index", "verify", i], {0, 1, 2}),
        (["search", i, "v1_00", "--json", "--top-k", "3"], {0, 2}),
        (["search", i, str(extra), "--budget", "5%,3"], {0, 2}),
        (["index", "remove", i, "no-such-video", "--ignore-missing"], {0, 2}),
        (["index", "add", i, str(extra), "--on-duplicate", "skip"], {0, 1, 2}),
        (["index", "remove", i, "v1_05"], {0, 2}),
        (["index", "compact", i], {0, 2}),
        (["index", "verify", i, "--no-checksums"], {0, 1, 2}),
    ]


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang("the command hung")


def _run_all(tmp: Path, template: dict[str, Path], mutation: Mutation, which: slice | list[int] | None = None
             ) -> list[str]:
    """Run every command on a damaged copy; returns what went wrong (empty when all held)."""
    idx = tmp / "idx"
    shutil.copytree(template["index"], idx, symlinks=True)
    outside = _canary(tmp)
    extra = shutil.copy(template["extra"], tmp / "extra.h5")
    mutation(idx, outside)
    before = _snapshot(tmp, idx)
    errors: list[str] = []
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        commands = _commands(idx, Path(extra))
        if which is not None:
            commands = [commands[i] for i in which]
        for argv, allowed in commands:
            where = f"[{mutation.__name__}] dnsvr {' '.join(argv[:2])}"
            signal.alarm(60)
            try:
                r = _invoke(argv)
            except _Hang:
                errors.append(f"{where}: hung")
                continue
            finally:
                signal.alarm(0)
            if r.exception is not None and not isinstance(r.exception, SystemExit):
                import traceback

                tb = traceback.format_exception(r.exception)
                errors.append(f"{where}: raised {type(r.exception).__name__}: {r.exception} at {tb[-2].strip()}")
                continue
            if r.exit_code not in allowed:
                errors.append(f"{where}: exit {r.exit_code}: {r.output[-300:]}")
            elif r.exit_code == 2:
                lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
                if len(lines) != 1 or not lines[0].startswith("error:"):
                    errors.append(f"{where}: not one line: {r.stderr[-300:]!r}")
            if "Traceback" in r.output:
                errors.append(f"{where}: traceback printed")
    finally:
        signal.signal(signal.SIGALRM, old)
    after = _snapshot(tmp, idx)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        errors.append(f"[{mutation.__name__}] files outside the index changed: {changed}")
    shutil.rmtree(tmp, ignore_errors=True)
    return errors


def _all_mutations(template: dict[str, Path]) -> list[Mutation]:
    muts = list(SQL_MUTATIONS) + list(JSON_MUTATIONS) + _whitening_mutations()
    for rel in _index_files(template["index"]):
        for op in FILE_OPS:
            m = _file_op(rel, op)
            m.__name__ = f"{rel}:{op}"
            muts.append(m)
    return muts


def _sample(muts: list[Mutation]) -> list[Mutation]:
    """Every SQL/JSON mutation, and for the file operations a fixed sample covering each file and each op."""
    rng = random.Random(16)
    files = [m for m in muts if ":" in m.__name__]
    other = [m for m in muts if ":" not in m.__name__]
    by_file: dict[str, list[Mutation]] = {}
    for m in files:
        by_file.setdefault(m.__name__.split(":")[0], []).append(m)
    chosen = []
    for rel, ms in sorted(by_file.items()):
        chosen += [m for m in ms if m.__name__.endswith(("symlink_out", "fifo"))]
        chosen.append(rng.choice([m for m in ms if not m.__name__.endswith(("symlink_out", "fifo"))]))
    return other + chosen


def test_every_command_on_every_damage_sample(tmp_path: Path, template: dict[str, Path]) -> None:
    """Default run: all metadata mutations, and each file of the index symlinked out, made a FIFO,
    and damaged one (seeded) way."""
    muts = _sample(_all_mutations(template))
    assert len(muts) >= 80
    # the readers always; the other commands in turn (each runs on every kind of damage)
    readers, others = [0, 2, 3], [1, 4, 5, 6, 7, 8, 9]
    errors = [e for n, m in enumerate(muts)
              for e in _run_all(tmp_path / f"case{n}", template, m,
                                readers + [others[n % 7], others[(n + 3) % 7]])]
    assert not errors, f"{len(errors)} failures:\n" + "\n".join(errors)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DNSVR_FAULTS_FULL"), reason="set DNSVR_FAULTS_FULL=1 (a few minutes)")
def test_every_command_on_every_damage_full(tmp_path: Path, template: dict[str, Path]) -> None:
    """Every mutation (each file x every damage), every command: ``DNSVR_FAULTS_FULL=1 pytest -k full``."""
    muts = _all_mutations(template)
    errors = [e for n, m in enumerate(muts) for e in _run_all(tmp_path / f"case{n}", template, m)]
    assert not errors, f"{len(errors)} failures:\n" + "\n".join(errors)


# ----------------------------------------------------------------------------------------------
# specific outcomes the fuzzing above only bounds
def _copy(tmp: Path, template: dict[str, Path]) -> Path:
    idx = tmp / "idx"
    shutil.copytree(template["index"], idx, symlinks=True)
    return idx


def test_shard_name_outside_is_refused_and_outside_file_untouched(tmp_path: Path, template: dict) -> None:
    idx = _copy(tmp_path, template)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"x" * 1000)
    con = sqlite3.connect(idx / "store" / "meta.sqlite")
    con.execute("UPDATE shards SET file = ?, committed = 100", ("../../../victim.txt",))
    con.commit()
    con.close()
    for argv in (["index", "remove", str(idx), "nope", "--ignore-missing"], ["index", "verify", str(idx)],
                 ["search", str(idx), "v1_00"]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 2, r.output
        assert "damaged index: meta.sqlite shards.file" in r.stderr
    assert victim.read_bytes() == b"x" * 1000


def test_bit_flipped_shard_is_refused_by_search(tmp_path: Path, template: dict) -> None:
    idx = _copy(tmp_path, template)
    shard = idx / "store" / "shards" / "fine-000000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    r = runner.invoke(app, ["search", str(idx), "v1_00", "--budget", "100%"])
    assert r.exit_code == 2 and "fail their CRC32" in r.stderr, r.output
    r = runner.invoke(app, ["index", "verify", str(idx)])
    assert r.exit_code == 1 and "fail CRC32" in r.output


def test_garbage_catalog_is_rebuilt_not_trusted(tmp_path: Path, template: dict) -> None:
    idx = _copy(tmp_path, template)
    want = runner.invoke(app, ["index", "list", str(idx)]).stdout
    (idx / "store" / "catalog.npz").write_bytes(b"PK\x03\x04garbage" * 100)
    r = runner.invoke(app, ["index", "list", str(idx)])
    assert r.exit_code == 0 and r.stdout == want
    assert runner.invoke(app, ["index", "remove", str(idx), "nope", "--ignore-missing"]).exit_code == 0
    from dnsvr.index._catalog import _Catalog

    assert _Catalog.load(idx / "store" / "catalog.npz") is not None  # the writer saved a good one


def test_damaged_current_json_is_ignored_and_explained(tmp_path: Path, template: dict) -> None:
    idx = _copy(tmp_path, template)
    cur = idx / "store" / "coarse" / "current.json"
    doc = json.loads(cur.read_text())
    doc["vectors"] = "../../../elsewhere.bin"
    cur.write_text(json.dumps(doc))
    r = runner.invoke(app, ["index", "verify", str(idx)])
    assert r.exit_code == 0 and "ignored" in r.output and "rebuilds" in r.output, r.output
    r = runner.invoke(app, ["search", str(idx), "v1_00", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["queries"][0]["results"][0]["video_id"] == "v1_01"
    assert not (tmp_path / "elsewhere.bin").exists()


@pytest.mark.parametrize("budget", ["", "5%,1000,3", "5%,5%", "1000,", "abc", "-3", "150%"])
def test_strict_budget(tmp_path: Path, template: dict, budget: str) -> None:
    r = runner.invoke(app, ["search", str(template["index"]), "v1_00", "--budget", budget])
    assert r.exit_code == 2 and "budget" in r.output


@pytest.mark.parametrize("top_k", ["0", "-1"])
def test_strict_top_k(template: dict, top_k: str) -> None:
    r = runner.invoke(app, ["search", str(template["index"]), "v1_00", "--top-k", top_k])
    assert r.exit_code == 2 and "top" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# hostile inputs: FIFOs, devices, newline names (in subprocesses: a hang would be a timeout)
def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    return subprocess.run([sys.executable, "-m", "dnsvr", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_fifo_and_devices_are_refused_without_hanging(tmp_path: Path, template: dict) -> None:
    idx = _copy(tmp_path, template)
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    h5fifo = tmp_path / "feats.h5"
    os.mkfifo(h5fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "inner.mp4")
    (folder / "loop.mp4").symlink_to(folder / "loop.mp4")
    r = _cli("index", "add", str(idx), str(fifo), str(h5fifo), str(folder), "/dev/zero")
    assert r.returncode == 1, r.stderr
    for name in ("clip.mp4", "feats.h5", "inner.mp4", "loop.mp4", "/dev/zero"):
        assert name in r.stderr, (name, r.stderr)
    r = _cli("search", str(idx), str(fifo))
    assert r.returncode == 2 and "FIFO" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("extract", str(fifo), str(folder), "-o", str(tmp_path / "out.h5"), "--no-progress", "--weights",
             "random")
    assert r.returncode in (1, 2) and "FIFO" in r.stdout + r.stderr
    r = _cli("evaluate", "--benchmark", "CC_WEB_VIDEO", "--similarities", str(fifo))
    assert r.returncode == 2 and "not a regular file" in r.stderr


def test_bad_id_is_one_skipped_input(tmp_path: Path, template: dict) -> None:
    idx = _copy(tmp_path, template)
    feats = _features(3, 3)
    feats["bad\nname"] = feats.pop("v3_02")
    h5 = _write_h5(tmp_path / "f.h5", feats)
    r = runner.invoke(app, ["index", "add", str(idx), str(h5), "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert sorted(doc["added"]) == ["v3_00", "v3_01"]
    assert len(doc["skipped"]) == 1 and "control characters" in doc["skipped"][0]["reason"]
    # extract applies the same rule to file names
    from dnsvr.extract import resolve_inputs

    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "ok.mp4").write_bytes(b"x")
    (tmp_path / "vids" / "bad\nname.mp4").write_bytes(b"x")
    failures: list = []
    pairs = resolve_inputs([tmp_path / "vids"], failures)
    assert [v for v, _ in pairs] == ["ok"]
    assert [f.code for f in failures] == ["bad_id"] and "control characters" in failures[0].reason


def test_evaluate_strict_scores(tmp_path: Path) -> None:
    import gzip

    from dnsvr.eval.similarities import SimilarityFileError, SimilarityTable, load_similarities

    cases = {
        "str.json": json.dumps({"q": {"a": "0.9"}}).encode(),
        "bool.json": json.dumps({"q": {"a": True}}).encode(),
        "inf.json": b'{"q": {"a": 1e999}}',
        "nan.json": b'{"q": {"a": NaN}}',
        "deep.json": b"[" * 100_000 + b"]" * 100_000,
        "trunc.json.gz": gzip.compress(b'{"q": {"a": 0.5}}')[:-6],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        for load in (SimilarityTable.from_file, load_similarities):
            with pytest.raises(SimilarityFileError):
                load(tmp_path / name)
        r = runner.invoke(app, ["evaluate", "--benchmark", "CC_WEB_VIDEO", "--similarities", str(tmp_path / name)])
        assert r.exit_code == 2, (name, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (name, r.exception)


# ----------------------------------------------------------------------------------------------
# kill -9 with concurrent writers and readers: the CI-sized run of benchmarks/bench_faults.py
@pytest.mark.slow
def test_kill9_trials_lose_nothing_and_readers_never_fail() -> None:
    """A first-add trial and a compact-heavy one (adds, removes, compactions), two writers killed in each."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import bench_faults
    finally:
        sys.path.pop(0)
    summary = bench_faults.run(trials=2, n_readers=1, seed=1600, out=None, kinds=("first-add", "compact"))
    bad = [t for t in summary["trials_detail"] if not t["ok"]]
    assert not bad, bad
    assert summary["committed_ops"] > 0 and summary["searches"] > 0
