"""Throughput of videos → region features: decoding alone, network alone, end to end; peak memory.

Generated 640×360 H.264 videos (``dnsvr.synthetic``: a 30 s rendered clip, looped by remuxing
to the requested length) are sampled at 1 frame per second, resized/cropped to 224×224 and
run through EfficientNet-Lite0 (its packaged ImageNet weights) and ResNet-50 (random weights:
the speed is the same). "frames/s" counts sampled frames, the ones the network sees.

* network alone: the extractor on frames already in memory (batches of ``--batch-size``);
* decoding alone: ``dnsvr.video`` over the same videos, interleaved variants: one FFmpeg thread (the
  default), FFmpeg's own threading, without skipping the frames that cannot be sampled (all exact), and the
  approximate ``decode="keyframes"``; CPU per sampled frame and its colour conversion + resize share;
* end to end: ``dnsvr.extract.iter_video_features`` (decoder thread + batched network), per variant: Lite0
  exact / exact with FFmpeg's threading (the old default) / keyframes; ResNet-50 fp32 / int8 / int8 + keyframes;
* the decode budget: the 10% overhead target as CPU milliseconds per frame against what exact decoding costs;
* ``--fidelity``: ResNet-50 int8 against fp32 (region cosine; copy-finding on a generated collection);
* decode overhead: ``network-alone frames/s / end-to-end frames/s - 1`` (wall clock), and the same
  from process CPU time per frame, which is less sensitive to other processes on the machine;
* the same for Lite0 on low-frame-rate sources (``--low-fps``), where decoding is cheap: what the
  pipeline itself costs, apart from decoding;
* memory: peak RSS of a fresh ``extract_videos`` process on a 1-minute and an N-minute video.

Usage::

    python benchmarks/bench_extract.py                     # full run, JSON to benchmarks/results/extract.json
    python benchmarks/bench_extract.py --quick             # a quick smoke run (shorter videos)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr import synthetic  # noqa: E402
from dnsvr.video import decode_frames  # noqa: E402

SIZE = (640, 360)


def make_video(workdir: Path, seconds: float, source_fps: float, unique: float = 30.0) -> Path:
    """A 640×360 H.264 video of ``seconds``: ``unique`` seconds rendered and encoded once, then looped."""
    unique = min(unique, seconds)
    clip = workdir / f"clip_{int(unique)}s_{source_fps:g}fps.mp4"
    if not clip.exists():
        synthetic.write_video(clip, synthetic.iter_clip(2024, unique, source_fps, SIZE), source_fps, crf=23,
                              preset="veryfast")
    repeats = max(1, int(round(seconds / unique)))
    if repeats == 1:
        return clip
    out = workdir / f"video_{int(seconds)}s_{source_fps:g}fps.mp4"
    if not out.exists():
        synthetic.loop_video(clip, out, repeats)
    return out


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - t0, time.process_time() - c0


class _TimedReader:
    """A VideoReader whose colour conversion + resize (``_convert``) is timed in thread CPU time."""

    def __init__(self, path: Path, **kwargs) -> None:
        from dnsvr.video import VideoReader

        self.convert_cpu = 0.0
        outer = self

        class Reader(VideoReader):
            def _convert(self, frame, geometry, out):  # noqa: ANN001, ANN202
                c0 = time.thread_time()
                super()._convert(frame, geometry, out)
                outer.convert_cpu += time.thread_time() - c0

        self.reader = Reader(path, **kwargs)


def bench_decode(videos: list[Path], skip: bool = True, threads: int = 1, decode: str = "exact",
                 interpolation: str = "BICUBIC") -> dict:
    """Decoding alone (Lite0's bicubic resize by default): CPU per sampled frame, and its colour conversion
    + resize share."""
    def run():
        sampled = decoded = 0
        convert = errors = 0.0
        for v in videos:
            timed = _TimedReader(v, fps=1.0, skip_unneeded=skip, threads=threads, decode=decode,
                                 interpolation=interpolation)
            sampled += sum(len(c) for c in timed.reader)
            decoded += timed.reader.n_decoded
            convert += timed.convert_cpu
            errors = max(errors, timed.reader.max_sampling_error)
        return sampled, decoded, convert, errors

    (sampled, decoded, convert, errors), wall, cpu = timed(run)
    out = {"sampled_frames": sampled, "decoded_frames": decoded, "seconds": round(wall, 3),
           "sampled_frames_per_s": round(sampled / wall, 2), "decoded_frames_per_s": round(decoded / wall, 1),
           "cpu_ms_per_sampled_frame": round(1000 * cpu / sampled, 2),
           "convert_cpu_ms_per_sampled_frame": round(1000 * convert / sampled, 2),
           "skip_unneeded": skip, "threads": threads, "decode": decode}
    if decode != "exact":
        out["max_sampling_error_s"] = round(errors, 3)
    return out


def bench_decode_rounds(videos: list[Path], repeats: int) -> dict:
    """Decoding variants interleaved over rounds (load from other processes hits them alike); the round with
    the least CPU time is kept per variant."""
    variants = {"threads1": dict(threads=1), "threads0_ffmpeg_auto": dict(threads=0),
                "threads1_no_skipping": dict(threads=1, skip=False), "keyframes": dict(threads=1, decode="keyframes")}
    best: dict[str, dict] = {}
    for _ in range(max(1, repeats)):
        for name, kw in variants.items():
            r = bench_decode(videos, **kw)
            if name not in best or r["cpu_ms_per_sampled_frame"] < best[name]["cpu_ms_per_sampled_frame"]:
                best[name] = r
    return best


#: End-to-end configurations per backbone: (label, extractor precision, iter_video_features options).
E2E_VARIANTS = {
    "efficientnet_lite0": [("exact", "fp32", {}), ("exact_ffmpeg_threads", "fp32", {"decode_threads": 0}),
                           ("keyframes", "fp32", {"decode": "keyframes"})],
    "resnet50": [("exact", "fp32", {}), ("exact_int8", "int8", {}), ("keyframes_int8", "int8", {"decode": "keyframes"})],
}


def _run(fn) -> dict:
    out, wall, cpu = timed(fn)
    n = out
    return {"frames": n, "seconds": round(wall, 3), "frames_per_s": round(n / wall, 2),
            "cpu_ms_per_frame": round(1000 * cpu / n, 2)}


def bench_backbone(name: str, videos: list[Path], batch_size: int, repeats: int,
                   variants: list[tuple[str, str, dict]] | None = None) -> dict:
    """Network alone (per precision) and end to end (per variant), interleaved over ``repeats`` rounds; the
    fastest round of each is kept. ``network_alone``/``end_to_end`` are the default (exact, fp32) ones."""
    import torch

    from dnsvr.backbones import FeatureExtractor
    from dnsvr.extract import iter_video_features

    variants = variants if variants is not None else E2E_VARIANTS.get(name, [("exact", "fp32", {})])
    weights = None if name == "efficientnet_lite0" else "random"
    frames = np.concatenate([c.frames for c in decode_frames(videos[0], fps=1.0)])
    pairs = [(f"v{i}", v) for i, v in enumerate(videos)]
    total = len(frames) * len(videos)                  # the throughput videos are copies of one video
    pool = np.concatenate([frames] * (total // len(frames) + 1))[:total]
    extractors = {}
    for precision in sorted({p for _, p, _ in variants}):
        ex = FeatureExtractor(name, weights=weights, batch_size=batch_size, precision=precision)
        ex(pool[:batch_size])                          # warm-up (kernel selection; int8: calibration)
        ex(pool[: max(1, total % batch_size)])
        extractors[precision] = ex
    best_net: dict[str, dict] = {}
    best_e2e: dict[str, dict] = {}
    for _ in range(repeats):
        for precision, ex in extractors.items():
            r = _run(lambda: len(ex(pool)))
            if precision not in best_net or r["frames_per_s"] > best_net[precision]["frames_per_s"]:
                best_net[precision] = r
        for label, precision, opts in variants:
            ex = extractors[precision]
            r = _run(lambda: sum(r.frames for r in iter_video_features(pairs, ex, batch_size=batch_size,
                                                                                **opts)))
            if label not in best_e2e or r["frames_per_s"] > best_e2e[label]["frames_per_s"]:
                best_e2e[label] = r
    out = {
        "dims": extractors[variants[0][1]].dims, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
        "weights": "ImageNet (packaged)" if name == "efficientnet_lite0" else "random",
        "network_alone": best_net["fp32"] if "fp32" in best_net else next(iter(best_net.values())),
        "end_to_end": best_e2e[variants[0][0]],
        "network_alone_by_precision": best_net,
        "end_to_end_by_variant": {label: dict(best_e2e[label], precision=precision, **{k: v for k, v in opts.items()})
                                  for label, precision, opts in variants},
    }
    net, e2e = out["network_alone"], out["end_to_end"]
    out["decode_overhead_wall"] = round(net["frames_per_s"] / e2e["frames_per_s"] - 1, 3)
    out["decode_overhead_cpu"] = round(e2e["cpu_ms_per_frame"] / net["cpu_ms_per_frame"] - 1, 3)
    for label, precision, _ in variants:
        v = out["end_to_end_by_variant"][label]
        v["overhead_cpu_vs_network_alone"] = round(v["cpu_ms_per_frame"] / best_net[precision]["cpu_ms_per_frame"]
                                                   - 1, 3)
    return out


def bench_int8_fidelity(video: Path, workdir: Path) -> dict:
    """ResNet-50 int8 vs fp32: region cosine on the benchmark video's frames, and copy-finding on a generated
    collection (originals as queries, their transformed copies as positives, Chamfer video similarity).

    No ImageNet ResNet-50 weights are available offline here, so the weights are random with batch-norm
    statistics re-estimated on video frames (activations scaled layer by layer as in a trained network);
    re-check with the real weights (``resnet50_imagenet``) when they are at hand."""
    import torch

    from dnsvr.backbones import FeatureExtractor
    from dnsvr.backbones._int8 import random_weights_scaled_on
    from dnsvr.extract import iter_video_features
    from dnsvr.nn.similarity import chamfer_video_similarity

    frames = np.concatenate([c.frames for c in decode_frames(video, fps=2.0)])
    torch.manual_seed(0)
    weights = random_weights_scaled_on(frames[:32], "resnet50", batch_size=8)
    fp32 = FeatureExtractor("resnet50", weights=weights)
    int8 = FeatureExtractor("resnet50", weights=weights, precision="int8")
    int8.calibrate(frames[:32])
    a, b = fp32(frames[32:]), int8(frames[32:])
    cos = (a * b).sum(-1)
    result = {"weights": "random, batch-norm statistics estimated on 32 frames of the benchmark video",
              "calibration_frames": 32, "test_frames": int(len(a)),
              "region_cosine_mean": round(float(cos.mean()), 4), "region_cosine_min": round(float(cos.min()), 4)}
    coll = synthetic.make_collection(workdir / "int8_collection", n_originals=4, n_distractors=6)
    feats = {}
    for label, ex in (("fp32", fp32), ("int8", int8)):
        feats[label] = {r.video_id: torch.from_numpy(r.features) for r in iter_video_features(coll.videos, ex)}
    retrieval = {}
    for label, fs in feats.items():
        ranks_ok, sims_all = 0, {}
        for q in coll.queries:
            sims = {vid: float(chamfer_video_similarity(fs[q], f)) for vid, f in fs.items() if vid != q}
            sims_all[q] = sims
            order = sorted(sims, key=sims.get, reverse=True)
            positives = set(coll.positives[q])
            ranks_ok += int(set(order[:len(positives)]) == positives)
        retrieval[label] = {"queries_with_all_copies_first": ranks_ok, "queries": len(coll.queries),
                            "sims": sims_all}
    diffs = [abs(retrieval["fp32"]["sims"][q][v] - retrieval["int8"]["sims"][q][v])
             for q in coll.queries for v in retrieval["fp32"]["sims"][q]]
    concordant = total = 0          # pairs of candidates ordered the same way by fp32 and int8 (Kendall-style)
    for q in coll.queries:
        sa, sb = retrieval["fp32"]["sims"][q], retrieval["int8"]["sims"][q]
        ids = sorted(sa)
        for i, u in enumerate(ids):
            for v in ids[i + 1:]:
                total += 1
                concordant += (sa[u] - sa[v]) * (sb[u] - sb[v]) > 0
    for r in retrieval.values():
        r.pop("sims")
    result["retrieval"] = dict(retrieval, videos=len(coll.videos), transforms=sorted(set(coll.transforms.values())),
                               max_abs_similarity_difference=round(max(diffs), 4),
                               candidate_pairs_in_the_same_order=round(concordant / total, 4))
    return result


def _duration(path: Path) -> float:
    from dnsvr.video import probe

    return float(probe(path).duration or 0.0)


_MEMORY_CHILD = """
import resource, sys, threading, time
sys.path.insert(0, {src!r})
import psutil
from dnsvr.backbones import FeatureExtractor
from dnsvr.extract import extract_videos
samples = []
def watch(proc=psutil.Process()):
    while True:
        samples.append((time.perf_counter(), proc.memory_info().rss))
        time.sleep(0.1)
threading.Thread(target=watch, daemon=True).start()
ex = FeatureExtractor("efficientnet_lite0")
t = time.perf_counter()
r = extract_videos([{video!r}], {out!r}, ex, progress=False)
end = time.perf_counter()
mid = t + (end - t) / 2
first = max((m for s, m in samples if t <= s < mid), default=0)
second = max((m for s, m in samples if s >= mid), default=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.frames, end - t, first, second)
"""


def bench_memory(video: Path, workdir: Path) -> dict:
    """Peak RSS of a fresh process extracting one video; also the peaks of the first and second half
    of the run (a pipeline whose memory grows with the video's length would peak in the second half)."""
    out = workdir / f"mem_{video.stem}.h5"
    out.unlink(missing_ok=True)
    code = _MEMORY_CHILD.format(src=str(ROOT / "src"), video=str(video), out=str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss_kb, frames, seconds, first, second = res.stdout.split()[-5:]
    return {"video_seconds": round(_duration(video), 1), "frames": int(frames),
            "peak_rss_mib": round(int(rss_kb) / 1024, 1), "seconds": round(float(seconds), 1),
            "peak_rss_first_half_mib": round(int(first) / 2**20, 1),
            "peak_rss_second_half_mib": round(int(second) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each throughput video")
    ap.add_argument("--videos", type=int, default=2, help="throughput videos (decoded separately)")
    ap.add_argument("--source-fps", type=float, default=25.0, help="frame rate of the generated videos")
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="alternate network/end-to-end runs; best kept")
    ap.add_argument("--memory-minutes", type=float, default=10.0, help="long video for the memory test (0: skip)")
    ap.add_argument("--low-fps", type=float, default=5.0,
                    help="also run Lite0 on videos of this frame rate, where decoding is cheap (0: skip)")
    ap.add_argument("--fidelity", action="store_true",
                    help="also measure ResNet-50 int8 against fp32 (region cosine, copy-finding on a generated "
                         "collection)")
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated videos here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract.json")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.videos, args.repeats, args.memory_minutes, args.low_fps = 30.0, 1, 1, 2.0, 0.0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dnsvr_bench_extract_"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "command": "python benchmarks/bench_extract.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": load()},
        "caveat": "measured on a 2-core machine shared with other processes (see load averages): wall-clock "
                  "numbers are noisy and pessimistic; CPU-time numbers are steadier",
        "video": {"size": list(SIZE), "source_fps": args.source_fps, "seconds": args.seconds, "count": args.videos,
                  "codec": "h264 (x264 veryfast, crf 23)", "sampling_fps": 1.0},
    }
    t = time.perf_counter()
    video = make_video(workdir, args.seconds, args.source_fps)
    videos = [video] * args.videos
    result["video"]["generation_seconds"] = round(time.perf_counter() - t, 1)
    print(f"videos: {args.videos} x {args.seconds:g} s 640x360 @ {args.source_fps:g} fps ({video})", flush=True)

    result["decode"] = bench_decode_rounds(videos, args.repeats)
    for k, r in result["decode"].items():
        print(f"decode {k:22s} {r['cpu_ms_per_sampled_frame']:6.2f} ms CPU per sampled frame (colour conversion + "
              f"resize {r['convert_cpu_ms_per_sampled_frame']:.2f}), {r['decoded_frames']} frames decoded for "
              f"{r['sampled_frames']} sampled" + (f", max error {r['max_sampling_error_s']} s"
                                                  if "max_sampling_error_s" in r else ""), flush=True)

    result["backbones"] = {}
    for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        result["backbones"][name] = r = bench_backbone(name, videos, args.batch_size, args.repeats)
        for precision, n in r["network_alone_by_precision"].items():
            print(f"{name} {precision}: network alone {n['frames_per_s']} frames/s, {n['cpu_ms_per_frame']} ms CPU "
                  f"per frame", flush=True)
        for label, e in r["end_to_end_by_variant"].items():
            print(f"{name} end to end {label:22s} {e['frames_per_s']:6.2f} frames/s, {e['cpu_ms_per_frame']:6.2f} ms "
                  f"CPU per frame (+{100 * e['overhead_cpu_vs_network_alone']:.0f}% over the network alone)",
                  flush=True)

    if args.low_fps > 0 and "efficientnet_lite0" in result["backbones"]:
        low = make_video(workdir, args.seconds, args.low_fps)
        result["low_fps_source"] = {"source_fps": args.low_fps, "decode": bench_decode([low] * args.videos),
                                    "efficientnet_lite0": bench_backbone("efficientnet_lite0", [low] * args.videos,
                                                                         args.batch_size, args.repeats,
                                                                         [("exact", "fp32", {})])}
        r = result["low_fps_source"]["efficientnet_lite0"]
        print(f"efficientnet_lite0 on {args.low_fps:g} fps sources: network alone {r['network_alone']['frames_per_s']}"
              f" frames/s, end to end {r['end_to_end']['frames_per_s']} frames/s, decode overhead "
              f"{100 * r['decode_overhead_wall']:.0f}% (wall) {100 * r['decode_overhead_cpu']:.0f}% (CPU time)",
              flush=True)

    if args.memory_minutes > 0:
        short = make_video(workdir, 60.0, args.source_fps)
        long = make_video(workdir, 60.0 * args.memory_minutes, args.source_fps)
        result["memory"] = {"short": bench_memory(short, workdir), "long": bench_memory(long, workdir)}
        m = result["memory"]
        m["growth_mib"] = round(m["long"]["peak_rss_mib"] - m["short"]["peak_rss_mib"], 1)
        m["note"] = ("peak_rss_mib is the whole process's peak, model construction included; the half-run peaks "
                     "are sampled every 0.1 s during extraction")
        print(f"memory: peak RSS {m['short']['peak_rss_mib']} MiB (1 min), {m['long']['peak_rss_mib']} MiB "
              f"({args.memory_minutes:g} min)", flush=True)

    if args.fidelity:
        result["int8_fidelity"] = bench_int8_fidelity(video, workdir)
        f = result["int8_fidelity"]
        print(f"int8 fidelity: region cosine {f['region_cosine_mean']} (min {f['region_cosine_min']}); copy-finding "
              f"{json.dumps(f['retrieval'])}", flush=True)

    lite = result["backbones"].get("efficientnet_lite0")
    res50 = result["backbones"].get("resnet50")
    if lite is not None:
        # the 10% budget: decoding may add at most a tenth of the network's CPU time per frame (both cores are busy
        # with the network, so every millisecond of decoding CPU shows in the end-to-end time)
        net_cpu = lite["network_alone"]["cpu_ms_per_frame"]
        dec = result["decode"]["threads1"]
        result["budget"] = {
            "lite0_network_cpu_ms_per_frame": net_cpu, "decode_budget_cpu_ms_per_frame_10pct": round(0.1 * net_cpu, 2),
            "exact_decode_cpu_ms_per_sampled_frame": dec["cpu_ms_per_sampled_frame"],
            "of_which_conversion_ms": dec["convert_cpu_ms_per_sampled_frame"],
            "decoded_frames_per_sampled_frame": round(dec["decoded_frames"] / dec["sampled_frames"], 1),
            "decode_cpu_ms_per_decoded_frame": round(dec["cpu_ms_per_sampled_frame"] * dec["sampled_frames"]
                                                     / dec["decoded_frames"], 2),
            "lite0_end_to_end_bound_frames_per_s": round(2000 / (net_cpu + dec["cpu_ms_per_sampled_frame"]), 1),
        }
    result["targets"] = {
        "lite0_end_to_end_ge_60": None if lite is None else lite["end_to_end"]["frames_per_s"] >= 60,
        "resnet50_end_to_end_ge_20": None if res50 is None else res50["end_to_end"]["frames_per_s"] >= 20,
        # judged on both measures: on a loaded machine the wall-clock ratio alone can look better than it is
        "decode_overhead_le_10pct": None if lite is None else max(lite["decode_overhead_wall"],
                                                                  lite["decode_overhead_cpu"]) <= 0.10,
        "peak_memory_le_1.5GiB": None if "memory" not in result else
        result["memory"]["long"]["peak_rss_mib"] <= 1536,
    }
    result["machine"]["load_average_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
