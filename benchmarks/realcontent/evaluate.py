"""Measure an index configuration on a split of the real-content benchmark, as a user runs it.

    python benchmarks/realcontent/evaluate.py --root data/realcontent --split dev --cache data/rc-cache

1. extracts the split's database videos once into a raw (unwhitened) feature file
   (``dnsvr extract --whitening none``; cached under ``--cache``, reused by every later run); the
   queries are searched as video files, as a user does (the inset match needs their pixels);
2. ``dnsvr index create`` (``--bundle``, default ``lite``) + ``dnsvr index add`` of the database features;
3. ``dnsvr search --top-k N --json`` for all query videos, at every ``--budgets`` (default: all pairs,
   ``5%``, and ``0`` = the coarse stage alone), with each ``--match`` mode asked for;
4. mAP of the ``copy`` and ``related`` tasks (``dnsvr.eval`` custom benchmark, the same as
   ``dnsvr evaluate --benchmark custom --ground-truth ROOT/SPLIT/ground_truth.json``), and, per
   transformation of the copies: AP with only that transformation's copies as positives, and how
   many copies rank below a negative or below a partial of their query.

Prints a table and writes ``--out`` (JSON). See docs/evaluation.md, "Real-content benchmark".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.eval import get_benchmark

TASKS = {"copy": ["copy"], "related": ["copy", "partial"]}


def dnsvr(*args: str) -> str:
    """Run the ``dnsvr`` CLI of this checkout; its stdout."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "dnsvr", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"dnsvr {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def extract_cached(root: Path, split: str, cache: Path) -> Path:
    """Raw region features of the split's database videos (extracted once)."""
    cache.mkdir(parents=True, exist_ok=True)
    h5 = cache / f"{split}_database.h5"
    # resumable: a rerun skips the videos already complete
    dnsvr("extract", str(root / split / "database"), "-o", str(h5), "--whitening", "none", "--dtype", "float16",
          "--no-progress")
    return h5


def similarities(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {q["query"]: {r["video_id"]: float(r["score"]) for r in q["results"]} for q in doc["queries"]}


def per_transform(sims: dict[str, dict[str, float]], gt: dict[str, dict[str, str]],
                  manifest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per transformation: copy AP with only its copies positive; copies ranked below a negative / a partial."""
    rows: dict[str, dict[str, list[float]]] = {}
    for q, scores in sims.items():
        labels = gt.get(q, {})
        ids = list(scores)
        s = np.array([scores[v] for v in ids])
        for name in {t for v, lab in labels.items() if lab == "copy" for t in manifest[v]["transforms"]}:
            keep = [i for i, v in enumerate(ids)
                    if labels.get(v) != "copy" or name in manifest[v]["transforms"]]
            ks = s[keep]
            pos = np.array([labels.get(ids[i]) == "copy" for i in keep])
            order = np.argsort(-ks, kind="stable")
            hits = pos[order]
            ranks = np.nonzero(hits)[0]
            ap = float(np.mean((np.arange(len(ranks)) + 1) / (ranks + 1))) if len(ranks) else float("nan")
            row = rows.setdefault(name, {"ap": [], "below_negative": [], "below_partial": [], "copies": []})
            row["ap"].append(ap)
            neg_best = max((scores[v] for v in ids if v not in labels), default=-np.inf)
            part_best = max((scores[v] for v, lab in labels.items() if lab == "partial"), default=-np.inf)
            for v, lab in labels.items():
                if lab == "copy" and name in manifest[v]["transforms"]:
                    row["copies"].append(1)
                    row["below_negative"].append(float(scores[v] < neg_best))
                    row["below_partial"].append(float(scores[v] < part_best))
    return {name: {"mAP": float(np.mean(r["ap"])), "copies": int(sum(r["copies"])),
                   "below_negative": int(sum(r["below_negative"])), "below_partial": int(sum(r["below_partial"]))}
            for name, r in sorted(rows.items())}


def evaluate(sims: dict[str, dict[str, float]], gt_path: Path) -> dict[str, float]:
    out = {}
    for task, labels in TASKS.items():
        bench = get_benchmark("custom", ground_truth=gt_path, positive_labels=labels)
        out[task] = round(float(bench.evaluate(sims)["mAP"]), 4)
    return out


def score_levels(sims: dict[str, dict[str, float]], gt: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Quantiles of the scores of copies, partials and unrelated videos (for thresholds)."""
    groups: dict[str, list[float]] = {"copy": [], "partial": [], "unrelated": []}
    for q, scores in sims.items():
        for v, s in scores.items():
            groups[gt.get(q, {}).get(v, "unrelated")].append(s)
    return {k: {f"p{p}": round(float(np.percentile(v, p)), 4) for p in (1, 5, 50, 95, 99)} | {"max": round(max(v), 4),
                                                                                         "min": round(min(v), 4)}
            for k, v in groups.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--cache", required=True, type=Path, help="folder for the cached raw features")
    parser.add_argument("--bundle", default="lite")
    parser.add_argument("--budgets", default="all,5%,0", help="comma-separated; 'all' re-ranks every pair")
    parser.add_argument("--match", default="", help="comma-separated match modes to run (default: the library's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: CACHE/SPLIT_report.json)")
    parser.add_argument("--keep-index", type=Path, default=None, help="build the index here and keep it")
    args = parser.parse_args()
    db_h5 = extract_cached(args.root, args.split, args.cache)
    query_videos = [str(p) for p in sorted((args.root / args.split / "queries").glob("*.mp4"))]
    gt_path = args.root / args.split / "ground_truth.json"
    gt = json.loads(gt_path.read_text())
    manifest = json.loads((args.root / args.split / "manifest.json").read_text())["videos"]
    tmp = Path(tempfile.mkdtemp(prefix="rc-index-"))
    index = args.keep_index or tmp / "index"
    if index.exists():
        shutil.rmtree(index)
    try:
        t0 = time.perf_counter()
        dnsvr("index", "create", str(index), "--bundle", args.bundle)
        dnsvr("index", "add", str(index), str(db_h5), "--no-progress")
        info = json.loads(dnsvr("index", "info", str(index), "--json"))
        n_db = int(info["videos"])
        report: dict[str, Any] = {"split": args.split, "bundle": args.bundle, "database": n_db,
                                  "queries": len(gt), "build_s": round(time.perf_counter() - t0, 1),
                                  "index_info": info.get("bundle"), "runs": {}}
        matches = [m for m in args.match.split(",") if m] or [None]
        for budget in args.budgets.split(","):
            for match in matches:
                cmd = ["search", str(index), *query_videos, "--top-k", str(n_db), "--json", "--no-segments",
                       "--no-progress"]
                cmd += ["--budget", str(n_db) if budget == "all" else budget]
                if match:
                    cmd += ["--match", match]
                t = time.perf_counter()
                doc = json.loads(dnsvr(*cmd))
                sims = similarities(doc)
                key = f"budget={budget}" + (f",match={match}" if match else "")
                report["runs"][key] = {"mAP": evaluate(sims, gt_path), "search_s": round(time.perf_counter() - t, 1),
                                       "per_transform": per_transform(sims, gt, manifest),
                                       "score_levels": score_levels(sims, gt),
                                       "command": "dnsvr " + " ".join(cmd[:2]) + " QUERY_VIDEOS... "
                                                  + " ".join(cmd[2 + len(query_videos):])}
                print(f"{key:28s} copy mAP {report['runs'][key]['mAP']['copy']:.4f}  "
                      f"related mAP {report['runs'][key]['mAP']['related']:.4f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first = next(iter(report["runs"].values()))
    print(f"\nper transformation ({next(iter(report['runs']))}): copy AP, copies below a negative / below a partial")
    for name, row in first["per_transform"].items():
        print(f"  {name:10s} {row['mAP']:.3f}  {row['below_negative']:3d} / {row['below_partial']:3d}  "
              f"of {row['copies']}")
    out = args.out or args.cache / f"{args.split}_report.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
