"""What a whitening refit costs against indexing the same videos (``dnsvr index refit`` vs ``index add``).

Generates N videos, builds a lite index the way a new user does (a first add of 2 videos, then the
rest), then refits it into a new index; repeated, each repeat timing the adds and the refit on the same
machine state. Prints and records the ratio refit time / add time (speed is never stated as an
absolute here: the machine is shared).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_refit.py [--videos 12] [--seconds 20] [--repeats 2]

Writes ``benchmarks/results/refit.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from dnsvr import synthetic as S
from dnsvr.index.video_index import VideoIndex

RESULTS = Path(__file__).resolve().parent / "results" / "refit.json"
logger = logging.getLogger("bench_refit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_refit_"))
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    paths = [S.write_video(videos / f"v{i:02d}.mp4", S.render_clip(i, seconds=args.seconds, fps=10, size=(320, 180)),
                           fps=10) for i in range(args.videos)]
    runs = []
    for r in range(args.repeats):
        for name in ("idx", "new"):
            shutil.rmtree(work / name, ignore_errors=True)
        t0 = time.perf_counter()
        with VideoIndex.create(work / "idx") as index:
            index.add(paths[:2], progress=False)
            index.add(paths[2:], progress=False)
            t_add = time.perf_counter() - t0
            fitted_before = index.info()["whitening_fitted_on"]
            t1 = time.perf_counter()
            report = index.refit_whitening(work / "new", progress=False)
            t_refit = time.perf_counter() - t1
        runs.append({"add_s": round(t_add, 2), "refit_s": round(t_refit, 2), "ratio": round(t_refit / t_add, 3),
                     "fitted_before": fitted_before, "fitted_after": report.fitted_on})
        print(f"repeat {r}: add {t_add:.1f} s, refit {t_refit:.1f} s, refit/add {t_refit / t_add:.2f}; "
              f"whitening {fitted_before['region_vectors']} vectors of {fitted_before['videos']} videos → "
              f"{report.fitted_on['region_vectors']} of {report.fitted_on['videos']}")
    out = {"videos": args.videos, "seconds": args.seconds, "runs": runs,
           "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_refit.py "
                      f"--videos {args.videos} --seconds {args.seconds:g} --repeats {args.repeats}"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
