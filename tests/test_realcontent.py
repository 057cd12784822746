"""The real-content benchmark generator: deterministic, the counts asked for, labels that match the content."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dnsvr.eval import get_benchmark
from dnsvr.eval import realcontent as rc

pytestmark = pytest.mark.slow

SIZES = rc.Sizes(queries=2, copies=(2, 2), partials=(1, 1), distractors_per_query=1.0, others_per_query=0.5,
                 train_videos=2, seconds=(3.0, 4.0), shots=(2, 3))


@pytest.fixture(scope="module")
def photos() -> list[rc.Source]:
    found = rc.find_photos()
    by_split = rc.sources_by_split(found, [])
    if not by_split["dev"] or not by_split["train"]:
        pytest.skip("the wallpaper packages are not installed (apt-get install sway-backgrounds lomiri-wallpapers)")
    return found


@pytest.fixture(scope="module")
def few(photos: list[rc.Source]) -> list[rc.Source]:
    """The three smallest files of each split (decoding 4K pictures is most of the generator's time)."""
    by_split = rc.sources_by_split(photos, [])
    return [s for split in by_split.values() for s in sorted(split, key=lambda s: Path(s.path).stat().st_size)[:3]]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, few: list[rc.Source]) -> tuple[Path, rc.GenerationReport]:
    root = tmp_path_factory.mktemp("realcontent")
    return root, rc.generate(root, seed=3, sizes=SIZES, splits=("dev", "train"), photos=few, clips=[])


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sources_never_reserved_and_splits_disjoint(photos: list[rc.Source]) -> None:
    assert all(not rc._reserved(s.path) for s in photos)
    assert not any("mate" in s.path or "plasma" in s.path for s in photos)
    by_split = rc.sources_by_split(photos, rc.find_clips())
    groups = [{s.group for s in by_split[name]} for name in rc.SPLITS]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    # the split of a source is fixed by its name, not by the seed or the other sources
    assert [rc.split_of(s) for s in photos] == [rc.split_of(s) for s in reversed(photos)][::-1]


def test_counts_and_layout(generated: tuple[Path, rc.GenerationReport]) -> None:
    root, report = generated
    dev = report.counts["dev"]
    assert dev["query"] == 2 and dev["copy"] == 4 and dev["partial"] == 2 and dev["distractor"] == 2
    assert dev["other"] == 1 and 1 <= dev["other-copy"] <= 2
    assert len(list((root / "dev" / "queries").glob("*.mp4"))) == 2
    n_db = sum(v for k, v in dev.items() if k != "query")
    assert len(list((root / "dev" / "database").glob("*.mp4"))) == n_db
    assert len(list((root / "train" / "videos").glob("*.mp4"))) == report.counts["train"]["video"] == 2
    assert not (root / "train" / "ground_truth.json").exists()


def test_labels_follow_the_content(generated: tuple[Path, rc.GenerationReport]) -> None:
    root, _ = generated
    gt = json.loads((root / "dev" / "ground_truth.json").read_text())
    videos = json.loads((root / "dev" / "manifest.json").read_text())["videos"]
    query_slots = {q: {s["slot"] for s in videos[q]["shots"]} for q in gt}
    all_query_slots = set().union(*query_slots.values())
    for vid, info in videos.items():
        if info["role"] == "query":
            continue
        slots = {s["slot"] for s in info["shots"]}
        for q in gt:
            label = gt[q].get(vid)
            shared = slots & query_slots[q]
            if info["role"] == "copy" and info["query"] == q:
                assert label == rc.LABEL_COPY and slots == query_slots[q] and info["transforms"]
            elif info["role"] == "partial" and info["query"] == q:
                assert label == rc.LABEL_PARTIAL and shared and slots - shared
            else:
                assert label is None and not shared
        if info["role"] in ("distractor", "other", "other-copy"):
            assert not slots & all_query_slots
    # the two tasks of the custom benchmark read the file: copies only, then copies and partials
    copy = get_benchmark("custom", ground_truth=root / "dev" / "ground_truth.json", positive_labels=["copy"])
    related = get_benchmark("custom", ground_truth=root / "dev" / "ground_truth.json",
                            positive_labels=["copy", "partial"])
    assert sum(map(len, copy.positives.values())) == 4
    assert sum(map(len, related.positives.values())) == 6
    # a perfect ranking scores 1 on both tasks; the reversed one does not
    ids = [v for v in videos if videos[v]["role"] != "query"]
    perfect = {q: {v: (2.0 if gt[q].get(v) == "copy" else 1.0 if gt[q].get(v) else 0.0) for v in ids} for q in gt}
    assert copy.evaluate(perfect)["mAP"] == pytest.approx(1.0)
    assert related.evaluate(perfect)["mAP"] == pytest.approx(1.0)
    reverse = {q: {v: -s for v, s in row.items()} for q, row in perfect.items()}
    assert copy.evaluate(reverse)["mAP"] < 0.7


def test_deterministic(generated: tuple[Path, rc.GenerationReport], few: list[rc.Source], tmp_path: Path) -> None:
    root, _ = generated
    again = rc.generate(tmp_path, seed=3, sizes=SIZES, splits=("dev",), photos=few, clips=[])
    assert again.counts["dev"] == json.loads((root / "report.json").read_text())["counts"]["dev"]
    assert _digest(tmp_path / "dev") == _digest(root / "dev")
    other = rc.generate(tmp_path / "other", seed=4, sizes=SIZES, splits=("dev",), photos=few, clips=[])
    assert other.counts["dev"]["query"] == 2
    assert (tmp_path / "other" / "dev" / "manifest.json").read_text() != (root / "dev" / "manifest.json").read_text()


def test_transforms_change_the_pixels() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(24, 64, 96, 3), dtype=np.uint8)

    def host(n: int, size: tuple[int, int], fps: float) -> np.ndarray:
        return np.zeros((n, size[1], size[0], 3), np.uint8)

    for name in rc.TRANSFORMS:
        clip = rc._apply(frames.copy(), [name], np.random.default_rng(1), host)
        changed = (clip.frames.shape != frames.shape or clip.fps != rc._FPS or clip.encode
                   or not np.array_equal(clip.frames, frames))
        assert changed, name
    with pytest.raises(ValueError, match="unknown split"):
        rc.generate(Path("/nonexistent"), splits=("nope",))
