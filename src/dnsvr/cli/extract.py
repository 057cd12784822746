"""``dnsvr extract``: video files → an HDF5 feature file (one [T, 9, D] dataset per video id)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from dnsvr.cli._common import echo_json, fail, warn

logger = logging.getLogger(__name__)


def extract_command(
    inputs: list[str] = typer.Argument(
        ..., help="Video files, folders (recursive), glob patterns, or list files of 'video_id<TAB>path' lines."),
    output: Path = typer.Option(..., "--output", "-o", help="The HDF5 feature file (created, or resumed)."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone",
                                 help="efficientnet_lite0 (offline default) or resnet50 (the paper's)."),
    fps: float = typer.Option(1.0, "--fps", help="Frames sampled per second of video."),
    whitening: str = typer.Option(
        "none", "--whitening", "-w",
        help="none; fit (PCA fitted on these videos, saved beside the output); published (resnet50: the "
             "paper's PCA); or a whitening file (.pth/.npz/.safetensors)."),
    dims: int = typer.Option(512, "--dims", help="Dimensions kept by a fitted or published whitening."),
    fit_videos: Optional[int] = typer.Option(
        None, "--fit-videos", help="With --whitening fit: fit on the first N videos only (default all)."),
    whitening_file: Optional[Path] = typer.Option(
        None, "--whitening-file", help="With --whitening fit: where to save (or find) the fitted whitening."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Backbone checkpoint path, or 'random' (default: the ImageNet weights)."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage type: float32 or float16."),
    batch_size: int = typer.Option(32, "--batch-size", help="Frames per network call."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    precision: str = typer.Option(
        "exact", "--precision", metavar="exact|int8",
        help="Network arithmetic: exact (float32), or int8 (resnet50 on the CPU: about 2.8x less CPU per frame, "
             "region vectors at cosine ~0.97 to exact; calibrated on the first frames extracted)."),
    workers: int = typer.Option(1, "--workers", help="Decoder threads (each decodes different videos)."),
    decode: str = typer.Option(
        "exact", "--decode",
        help="exact (default: the first frame at or after each tick) or keyframes (approximate, much cheaper: only "
             "keyframes are decoded and each tick takes the latest keyframe at or before it; the error, up to the "
             "keyframe interval, is stored per video as max_sampling_error, in seconds)."),
    short_side: Optional[int] = typer.Option(None, "--short-side", help="Resize the short side to this (256)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Centre crop side (224)."),
    failures_json: Optional[Path] = typer.Option(
        None, "--failures-json", help="Also write the failure summary as JSON to this file."),
    checkpoint_interval: float = typer.Option(
        30.0, "--checkpoint-interval", help="Seconds between checkpoints of the output file (0: every video)."),
    progress: bool = typer.Option(None, "--progress/--no-progress",
                                  help="Progress on stderr (default: a bar on a terminal, a line per video "
                                       "otherwise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Decode and extract on a Ray cluster: auto, an address, or local (needs dnsvr[ray]); "
                            "this process writes the file."),
) -> None:
    """Extract region features from videos into an HDF5 file, in the layout of the published feature files.

    Re-running the same command resumes: finished videos are not extracted again. Bad inputs are listed
    (id, path, reason) at the end and do not stop the others; the exit status is 1 when any
    video failed or was damaged, 2 on a usage error.

    Examples:

    \b
      dnsvr extract videos/ -o features.h5
      dnsvr extract videos/ -o features.h5 --whitening fit       # + a PCA fitted on these videos
      dnsvr extract list.tsv -o features.h5 --backbone resnet50 --whitening published
    """
    from dnsvr.backbones import BACKBONES, FeatureExtractor
    from dnsvr.extract import extract_videos
    from dnsvr.features import FeatureFileError
    from dnsvr.video import check_decode
    from dnsvr.weights import WeightsUnavailableError

    if backbone not in BACKBONES:
        fail(f"--backbone must be one of {', '.join(sorted(BACKBONES))}, got {backbone!r}")
    if dtype not in ("float32", "float16"):
        fail(f"--dtype must be float32 or float16, got {dtype!r}")
    if fps <= 0:
        fail(f"--fps must be > 0, got {fps}")
    try:
        check_decode(decode, fps, name="--decode")
    except ValueError as exc:
        fail(str(exc))
    if precision not in ("exact", "int8", "fp32"):  # fp32: the earlier name of exact
        fail(f"--precision must be exact or int8, got {precision!r}")
    try:
        extractor = FeatureExtractor(backbone, device=device, weights=weights, batch_size=batch_size,
                                     precision=precision)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(str(exc))
    try:
        report = extract_videos(
            inputs, output, extractor, fps=fps, whitening=whitening, dims=dims, fit_videos=fit_videos,
            whitening_file=whitening_file, dtype=dtype, short_side=short_side, crop=crop, batch_size=batch_size,
            decode_workers=workers, decode=decode, checkpoint_interval=checkpoint_interval,
            progress=progress, failures_json=failures_json, **({"ray": ray} if ray else {}))
    except (FeatureFileError, FileNotFoundError, ValueError, WeightsUnavailableError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        warn(f"interrupted: every finished video is in {output}; run the same command to resume")
        raise typer.Exit(code=130) from None
    if as_json:
        echo_json(report.to_dict())
    else:
        typer.echo(report.summary())
        if report.whitening_file:
            typer.echo(f"whitening {report.whitening} saved in {report.whitening_file}")
        typer.echo(f"features: {output}")
    if not report.ok:
        raise typer.Exit(code=1)
