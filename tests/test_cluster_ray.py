"""Scale-out on a local Ray cluster started here: distributed extraction, sharded search on actors, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from dnsvr import synthetic as S  # noqa: E402
from dnsvr.backbones import FeatureExtractor  # noqa: E402
from dnsvr.cluster._ray import worker_env  # noqa: E402
from dnsvr.cluster.extract import FAULT_ENV, iter_video_features_ray  # noqa: E402
from dnsvr.extract import iter_video_features  # noqa: E402
from dnsvr.index.query import ShardUnavailableError  # noqa: E402
from dnsvr.index.sharded import ShardedIndex  # noqa: E402
from dnsvr.index.store import IndexStore  # noqa: E402
from dnsvr.index.video_index import VideoIndex  # noqa: E402

from helpers import assert_same_results, make_collection, plain_bundle, write_h5  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU Ray cluster on this machine; yields the folder of planted worker faults."""
    faults = tmp_path_factory.mktemp("faults")
    env = worker_env() or {"env_vars": {}}
    env["env_vars"][FAULT_ENV] = str(faults)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=env, log_to_driver=False)
    try:
        yield faults
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(5):
        S.write_video(root / f"v{i}.mp4", S.render_clip(40 + i, seconds=3.0 + i % 2, fps=10, size=(96, 64)), fps=10)
    S.write_undecodable_video(root / "broken.mp4")
    return root


def test_distributed_extraction_equals_local_and_retries_a_dead_worker(cluster, videos):
    (cluster / "v2.die").touch()  # the worker that takes v2 first dies mid-video
    remote_fail: list = []
    remote = {r.video_id: (r.features, r.attrs()) for r in iter_video_features_ray([videos], failures=remote_fail)}
    assert (cluster / "v2.died").exists(), "the planted fault did not fire"
    local_fail: list = []
    local = {r.video_id: (r.features, r.attrs())
             for r in iter_video_features([videos], FeatureExtractor("efficientnet_lite0"), failures=local_fail)}
    assert sorted(remote) == sorted(local) == [f"v{i}" for i in range(5)]
    for vid, (feats, meta) in local.items():
        np.testing.assert_allclose(remote[vid][0], feats, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(remote[vid][1]["timestamps"], meta["timestamps"])
    assert [(f.video_id, f.code) for f in remote_fail] == [(f.video_id, f.code) for f in local_fail]
    assert [f.video_id for f in remote_fail] == ["broken"]


def test_extract_to_a_feature_file_on_ray_equals_local(cluster, videos, tmp_path):
    from dnsvr.extract import extract_videos
    from dnsvr.features import FeatureFile

    extractor = FeatureExtractor("efficientnet_lite0")
    remote = extract_videos([videos], tmp_path / "ray.h5", extractor, ray="auto", progress=False)
    local = extract_videos([videos], tmp_path / "local.h5", extractor, progress=False)
    assert [f.video_id for f in remote.failures] == [f.video_id for f in local.failures] == ["broken"]
    with FeatureFile(tmp_path / "ray.h5") as a, FeatureFile(tmp_path / "local.h5") as b:
        assert sorted(a.ids()) == sorted(b.ids()) == [f"v{i}" for i in range(5)]
        for vid in b.ids():
            np.testing.assert_allclose(a.read(vid), b.read(vid), atol=1e-4, rtol=0)
            np.testing.assert_array_equal(a.info(vid)["timestamps"], b.info(vid)["timestamps"])
    again = extract_videos([videos], tmp_path / "ray.h5", extractor, ray="auto", progress=False)
    assert sorted(again.already_extracted) == [f"v{i}" for i in range(5)] and not again.extracted  # resumed: nothing to do


def test_killed_distributed_add_resumes_losing_nothing(cluster, videos, tmp_path):
    index_dir = tmp_path / "idx"
    VideoIndex.create(index_dir, plain_bundle_for_videos()).close()
    for vid in ("v3", "v4"):  # their workers die once: the add is still running when the others are committed
        (cluster / f"{vid}.die").touch()
    address = ray.get_runtime_context().gcs_address
    script = ("import sys; from dnsvr.index.video_index import VideoIndex\n"
              "ix = VideoIndex.open(sys.argv[1])\n"
              "ix.add([sys.argv[2]], batch_size=1, ray=sys.argv[3])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    log = open(tmp_path / "add.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", script, str(index_dir), str(videos), address], env=env,
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        committed = 0
        while time.monotonic() < deadline and proc.poll() is None and committed < 1:
            time.sleep(0.05)
            if (index_dir / "store").is_dir():
                with IndexStore.open(index_dir / "store", readonly=True) as reader:
                    committed = len(reader)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the add finished before it could be killed: " + (
            tmp_path / "add.log").read_text()[-2000:]
        assert committed >= 1, "the distributed add committed nothing"
    finally:
        proc.kill()
        proc.wait()
    with VideoIndex.open(index_dir) as index:
        assert index.verify().ok
        before = set(index.ids())
        assert 1 <= len(before) < 5
        report = index.add([videos], ray="auto", on_duplicate="skip")  # the same command again resumes
        assert set(report.already_indexed) == before and not before & set(report.added)
        assert sorted(index.ids()) == [f"v{i}" for i in range(5)]
        assert [i for i, _ in report.skipped] == [str(videos / "broken.mp4")]
        assert index.verify().ok
        # the features equal a local add's
        local = VideoIndex.create(tmp_path / "local", plain_bundle_for_videos())
        local.add([videos])
        for vid in local.ids():
            np.testing.assert_allclose(np.asarray(index.store.fine([vid])[0], np.float32),
                                       np.asarray(local.store.fine([vid])[0], np.float32), atol=2e-3)
        local.close()


def plain_bundle_for_videos():
    from dnsvr.bundle import Bundle

    return Bundle("plain-raw", "efficientnet_lite0", whitening=None, fine_type="chamfer",
                  fine_args={"dims": FeatureExtractor("efficientnet_lite0", weights="random").dims})


@pytest.fixture(scope="module")
def sharded(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    vids, groups = make_collection(seed=5, n_groups=5, copies=2, n_distractors=10)
    h5 = write_h5(root / "feats.h5", vids)
    single = VideoIndex.create(root / "single", plain_bundle())
    single.add([h5])
    ShardedIndex.create(root / "sharded", plain_bundle(), shards=4).add([h5])
    yield single, root / "sharded", list(groups) + ["d3"]
    single.close()


def test_sharded_search_on_actors_equals_single(sharded):
    single, path, queries = sharded
    with ShardedIndex.open(path, readonly=True, ray="auto") as index:
        for budget in ("0", "2", "20%", "100%"):
            assert_same_results(single.search(queries, top_k=None, budget=budget, segments=False),
                                index.search(queries, top_k=None, budget=budget, segments=False))
        assert_same_results(single.search(queries[:2], budget="30%"), index.search(queries[:2], budget="30%"))


def test_actor_killed_mid_query_is_restarted_and_retried(sharded):
    single, path, queries = sharded
    expected = single.search(queries[:3], top_k=None, budget="40%")
    with ShardedIndex.open(path, readonly=True, ray="auto") as index:
        group = index._shard_group()
        pids = group.pids()
        call = group.call
        killed = []

        def call_killing(method, args):
            if method == "fine_scores" and not killed:  # between the coarse and the fine stage
                os.kill(pids[1], signal.SIGKILL)
                killed.append(pids[1])
            return call(method, args)

        group.call = call_killing
        assert_same_results(expected, index.search(queries[:3], top_k=None, budget="40%"))
        assert killed and group.pids()[1] != pids[1]
        # an actor that cannot come back: a clear error, or partial results naming the shard
        ray.kill(group.actors[2], no_restart=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the kill is asynchronous: wait until the actor is gone
            try:
                ray.get(group.actors[2].pid.remote(), timeout=30)
            except ray.exceptions.RayActorError:
                break
            time.sleep(0.2)
        with pytest.raises(ShardUnavailableError, match="shard-002"):
            index.search(queries[:1], budget="40%")
        (partial,) = index.search(queries[:1], top_k=None, budget="40%", allow_partial=True)
        assert partial.missing_shards == ["shard-002"]
        gone = set(index.shards[2].ids())
        assert gone and not gone & {r.video_id for r in partial.results}
        assert {r.video_id for r in partial.results} == {r.video_id for r in expected[0].results} - gone
