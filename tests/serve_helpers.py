"""Shared fixture of the service tests: a small lite index over generated videos under a media root."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789"


@dataclass
class ServeData:
    root: Path          # the media root
    index: Path         # the index directory (copies + distractors + orig_1 indexed; orig_0 is not)
    query: Path         # orig_0.mp4: a query whose copies are indexed
    extra: Path         # a folder of videos not yet indexed (for add jobs)

    def fresh_index(self, dest: Path) -> Path:
        """A private copy of the index (for tests that write)."""
        shutil.copytree(self.index, dest)
        return dest


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory: pytest.TempPathFactory) -> ServeData:
    from dnsvr.index.video_index import VideoIndex
    from dnsvr.synthetic import make_collection, render_clip, write_video

    base = tmp_path_factory.mktemp("serve")
    root = base / "media"
    col = make_collection(root / "col", n_originals=2, n_distractors=2, transforms=("crop", "hflip"),
                          seconds=12.0, fps=10.0, size=(160, 96))
    extra = root / "extra"
    extra.mkdir()
    for i in range(3):
        write_video(extra / f"new_{i}.mp4", render_clip(seed=900 + i, seconds=4.0, fps=10, size=(160, 96)), fps=10)
    with VideoIndex.create(base / "idx") as index:
        report = index.add([p for vid, p in col.videos.items() if vid != "orig_0"], progress=False)
        assert not report.skipped, report.skipped
    return ServeData(root=root, index=base / "idx", query=col.videos["orig_0"], extra=extra)
