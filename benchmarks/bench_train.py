"""Training speed: triplets per second per student type (and selector pairs per second).

Times full optimisation steps (``index_video`` on the padded batch, student forward, L1 +
regularisation loss, backward, Adam step) on random region features of the published size
(512-d, 9 regions) and the published network sizes, for the fine attention (fg-att), fine
binarization (fg-bin) and coarse (cg) students, and the selector. Batches are padded with
videos of ``--min-frames``..``--frames`` frames. The first ``--warmup`` steps are not timed.

Writes JSON to benchmarks/results/train.json. Usage::

    PYTHONPATH=src python benchmarks/bench_train.py [--frames 32] [--batch 16] [--steps 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr.train.data import pad_videos  # noqa: E402
from dnsvr.train.students import _autocast, build_student, triplet_step  # noqa: E402


def batch(rng: np.random.Generator, n: int, dims: int, min_frames: int, frames: int):
    vids = []
    for _ in range(n):
        x = rng.standard_normal((int(rng.integers(min_frames, frames + 1)), 9, dims)).astype(np.float32)
        vids.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    return pad_videos(vids)


def bench_student(kind: str, args: argparse.Namespace, dev: torch.device) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_student(kind, args.dims).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = [batch(rng, 3 * args.batch, args.dims, args.min_frames, args.frames) for _ in range(2)]
    sims = torch.rand(args.batch, 2, device=dev)
    times = []
    for step in range(args.warmup + args.steps):
        v, m = data[step % 2]
        v, m = v.to(dev), m.to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, args.amp):
            loss, _, _ = triplet_step(model, kind, v, m, sims, 1e-3)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    per_step = float(np.median(times))
    return {"triplets_per_second": args.batch / per_step, "seconds_per_step_median": per_step,
            "seconds_per_step_all": times, "parameters": sum(p.numel() for p in model.parameters())}


def bench_selector(args: argparse.Namespace, dev: torch.device) -> dict:
    from dnsvr.nn import SelectorNetwork

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = SelectorNetwork(dims=args.dims).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n = 2 * args.batch
    v, m = batch(rng, n, args.dims, args.min_frames, args.frames)
    v, m = v.to(dev), m.to(dev)
    y = (torch.rand(args.batch, 1, device=dev) > 0.5).float()
    c = torch.rand(args.batch, 1, device=dev)
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        q, t = torch.chunk(model.index_video(v, m), 2, dim=0)
        loss = torch.nn.functional.binary_cross_entropy(model(torch.cat([q, t, c], 1)), y)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    per_step = float(np.median(times))
    return {"pairs_per_second": args.batch / per_step, "seconds_per_step_median": per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, default=512)
    ap.add_argument("--frames", type=int, default=32, help="longest video in a batch")
    ap.add_argument("--min-frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="triplets (selector: pairs) per step")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--types", default="fg-att,fg-bin,cg,selector")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = ap.parse_args()
    dev = torch.device(args.device)
    results = {}
    for kind in args.types.split(","):
        results[kind] = bench_selector(args, dev) if kind == "selector" else bench_student(kind, args, dev)
        rate = results[kind].get("triplets_per_second", results[kind].get("pairs_per_second"))
        unit = "pairs/s" if kind == "selector" else "triplets/s"
        print(f"{kind:9s} {rate:8.2f} {unit}  ({results[kind]['seconds_per_step_median'] * 1000:.0f} ms/step)")
    out = {"benchmark": "train", "command": "PYTHONPATH=src python " + " ".join(sys.argv),
           "settings": {k: v for k, v in vars(args).items() if k != "output"},
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                       "load_average_at_end": os.getloadavg()},
           "note": "shared CPU: other jobs ran at the same time; treat as rough figures",
           "results": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
