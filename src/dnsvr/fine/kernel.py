"""The compiled stages of the fine engine (``dnsvr._finekernel``): whether they are built and run on this CPU.

:data:`_KERNEL` is the extension module when it is built, the CPU has AVX-512 VNNI and ``DNSVR_FINE_KERNEL``
is not ``0``; else None and the torch code of :mod:`dnsvr.fine.regions` and :mod:`dnsvr.fine.comparator`
runs everything. Every user reads it through this module at call time (tests and benchmarks switch it off
here). :func:`cpu_flags` is the one reader of the CPU's feature flags.
"""

from __future__ import annotations

import logging
import os

try:
    from dnsvr import _finekernel
except ImportError as _exc:  # not built: the torch engine does the region stage
    _finekernel = None
    _FINEKERNEL_MISSING = f"{_exc}"
else:
    _FINEKERNEL_MISSING = ""

logger = logging.getLogger(__name__)


def _select_kernel():  # noqa: ANN202  (the extension module, or None)
    """The compiled stages when they are built, this CPU runs them and ``DNSVR_FINE_KERNEL`` is not ``0``."""
    if _finekernel is None:
        logger.debug("dnsvr._finekernel not built (%s): the torch engine runs everything", _FINEKERNEL_MISSING)
        return None
    if os.environ.get("DNSVR_FINE_KERNEL", "1") == "0":
        logger.debug("DNSVR_FINE_KERNEL=0: the torch engine runs everything")
        return None
    if not _finekernel.supported():
        logger.debug("this CPU lacks AVX-512 VNNI: the torch engine runs everything")
        return None
    return _finekernel


#: The compiled stages (``dnsvr._finekernel``: the fused region stage, the comparator's conv1 + pooling and
#: its second pooling) in use, or None (the torch engine runs them).
_KERNEL = _select_kernel()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``), or None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI); True where unknown."""
    flags = cpu_flags()
    return flags is None or "avx512_vnni" in flags or "avx_vnni" in flags
