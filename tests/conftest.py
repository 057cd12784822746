"""Shared test fixtures: the location of ../shared (golden outputs, benchmark annotations)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("DNSVR_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (or $DNSVR_SHARED); skips the test when absent."""
    path = _shared_dir()
    if not (path / "golden").is_dir():
        pytest.skip(f"reference data not found at {path} (set DNSVR_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def golden_models(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "models"
