"""Shared test fixtures: the location of ../shared (golden outputs, benchmark annotations)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_summary() -> str:
    """The CPU's model name and the instruction sets the compiled paths and oneDNN dispatch on."""
    from dnsvr.fine.kernel import cpu_flags

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        pass
    flags = cpu_flags() or set()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    present = [f for f in wanted if f in flags] or ["(flags unknown)"]
    return f"{model}; {' '.join(present)}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which machine and which compiled paths this run used, so a failure says where it came from.

    Shown in the header; ``-q`` (the README's and CI's command) hides the header, so
    :func:`pytest_terminal_summary` repeats it at the end.
    """
    import torch

    from dnsvr.fine import kernel as _fine
    from dnsvr.fine import regions

    if _fine._KERNEL is not None:
        fine = "compiled kernel (dnsvr._finekernel, AVX-512 VNNI)"
    elif _fine._finekernel is None:
        fine = "torch engine (dnsvr._finekernel not built)"
    elif os.environ.get("DNSVR_FINE_KERNEL", "1") == "0":
        fine = "torch engine (DNSVR_FINE_KERNEL=0)"
    else:
        fine = "torch engine (this CPU lacks AVX-512 VNNI: the compiled kernel's tests skip)"
    try:
        from dnsvr.eval import _simscan  # noqa: F401

        simscan = "compiled"
    except ImportError:
        simscan = "not built (Python fallback)"
    return [
        f"dnsvr cpu: {_cpu_summary()}",
        f"dnsvr fine stage: {fine}; int8 products: "
        f"{'float32 (no VNNI)' if regions._INT8_MM_FLOAT else 'oneDNN int8'}; torch {torch.__version__} cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}; similarity-file reader: {simscan}",
    ]


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


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    """The header's machine and paths lines, at the end, also under ``-q``."""
    if config.get_verbosity() < 0:
        for line in pytest_report_header(config):
            terminalreporter.write_line(line)
