"""Throughput of videos → region features: decoding alone, network alone, end to end; peak memory.

Generated 640×360 H.264 videos (``dnsvr.synthetic``: a 30 s rendered clip, looped by remuxing
to the requested length) are sampled at 1 frame per second, resized/cropped to 224×224 and
run through EfficientNet-Lite0 (its packaged ImageNet weights) and ResNet-50 (random weights:
the speed is the same). "frames/s" counts sampled frames, the ones the network sees.

* network alone: the extractor on frames already in memory (batches of ``--batch-size``);
* decoding alone: ``dnsvr.video`` over the same videos (with and without skipping the frames
  that cannot be sampled, which is exact);
* end to end: ``dnsvr.extract.iter_video_features`` (decoder thread + batched network);
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


def bench_decode(videos: list[Path], skip: bool) -> dict:
    def run():
        sampled = decoded = 0
        for v in videos:
            reader = decode_frames(v, fps=1.0, skip_unneeded=skip)
            sampled += sum(len(c) for c in reader)
            decoded += reader.n_decoded
        return sampled, decoded

    (sampled, decoded), wall, cpu = timed(run)
    return {"sampled_frames": sampled, "decoded_frames": decoded, "seconds": round(wall, 3),
            "sampled_frames_per_s": round(sampled / wall, 2), "decoded_frames_per_s": round(decoded / wall, 1),
            "cpu_ms_per_sampled_frame": round(1000 * cpu / sampled, 2), "skip_unneeded": skip}


def bench_backbone(name: str, videos: list[Path], batch_size: int, repeats: int) -> dict:
    import torch

    from dnsvr.backbones import FeatureExtractor
    from dnsvr.extract import iter_video_features

    extractor = FeatureExtractor(name, weights=None if name == "efficientnet_lite0" else "random",
                                 batch_size=batch_size)
    frames = np.concatenate([c.frames for c in decode_frames(videos[0], fps=1.0)])
    pairs = [(f"v{i}", v) for i, v in enumerate(videos)]
    total = len(frames) * len(videos)                  # the throughput videos are copies of one video
    pool = np.concatenate([frames] * (total // len(frames) + 1))[:total]
    extractor(pool[:batch_size])                       # warm-up (kernel selection)
    extractor(pool[: max(1, total % batch_size)])
    best_net = best_e2e = None
    for _ in range(repeats):
        _, wall, cpu = timed(lambda: extractor(pool))
        net = {"frames": total, "seconds": round(wall, 3), "frames_per_s": round(total / wall, 2),
               "cpu_ms_per_frame": round(1000 * cpu / total, 2)}
        if best_net is None or net["frames_per_s"] > best_net["frames_per_s"]:
            best_net = net
        out, wall, cpu = timed(lambda: [f.shape[0] for _, f, _ in iter_video_features(pairs, extractor,
                                                                                    batch_size=batch_size)])
        n = sum(out)
        e2e = {"frames": n, "seconds": round(wall, 3), "frames_per_s": round(n / wall, 2),
               "cpu_ms_per_frame": round(1000 * cpu / n, 2)}
        if best_e2e is None or e2e["frames_per_s"] > best_e2e["frames_per_s"]:
            best_e2e = e2e
    return {
        "dims": extractor.dims, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
        "weights": "ImageNet (packaged)" if name == "efficientnet_lite0" else "random",
        "network_alone": best_net, "end_to_end": best_e2e,
        "decode_overhead_wall": round(best_net["frames_per_s"] / best_e2e["frames_per_s"] - 1, 3),
        "decode_overhead_cpu": round(best_e2e["cpu_ms_per_frame"] / best_net["cpu_ms_per_frame"] - 1, 3),
    }


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
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated videos here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract.json")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.videos, args.repeats, args.memory_minutes, args.low_fps = 30.0, 1, 1, 2.0, 0.0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dnsvr_bench_extract_"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "command": "python benchmarks/bench_extract.py" + (" --quick" if args.quick else ""),
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

    result["decode"] = {"skip_unneeded": bench_decode(videos, True), "full": bench_decode(videos, False)}
    print("decode:", json.dumps(result["decode"]), flush=True)

    result["backbones"] = {}
    for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        result["backbones"][name] = r = bench_backbone(name, videos, args.batch_size, args.repeats)
        print(f"{name}: network alone {r['network_alone']['frames_per_s']} frames/s, end to end "
              f"{r['end_to_end']['frames_per_s']} frames/s, decode overhead {100 * r['decode_overhead_wall']:.0f}% "
              f"(wall) {100 * r['decode_overhead_cpu']:.0f}% (CPU time)", flush=True)

    if args.low_fps > 0 and "efficientnet_lite0" in result["backbones"]:
        low = make_video(workdir, args.seconds, args.low_fps)
        result["low_fps_source"] = {"source_fps": args.low_fps, "decode": bench_decode([low] * args.videos, True),
                                    "efficientnet_lite0": bench_backbone("efficientnet_lite0", [low] * args.videos,
                                                                         args.batch_size, args.repeats)}
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

    lite = result["backbones"].get("efficientnet_lite0")
    res50 = result["backbones"].get("resnet50")
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
