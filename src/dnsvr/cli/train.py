"""``dnsvr train``: distil students and a selector on your own unlabelled videos.

    dnsvr train mine FEATURES.h5 -o pairs.h5 --teacher chamfer
    dnsvr train student --type fg-att --pairs pairs.h5 --features FEATURES.h5 -o runs/fg_att
    dnsvr train student --type cg     --pairs pairs.h5 --features FEATURES.h5 -o runs/cg
    dnsvr train selector --pairs pairs.h5 --features FEATURES.h5 --fine runs/fg_att --coarse runs/cg -o runs/sel
    dnsvr train bundle --fine runs/fg_att --coarse runs/cg --selector runs/sel -o my_bundle
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from dnsvr.cli._common import TYPER_SETTINGS, echo_json, fail

logger = logging.getLogger(__name__)

train_app = typer.Typer(help="Distil students and a selector on your own unlabelled videos (DnS training).",
                        **TYPER_SETTINGS)

_JSON = typer.Option(False, "--json", help="Print the result as one JSON document.")
_PROGRESS = typer.Option(None, "--progress/--no-progress",
                         help="Progress on stderr (default: a bar on a terminal, lines otherwise).")


def _report(payload: dict[str, Any], as_json: bool) -> None:
    """``--json``: the payload as JSON; otherwise one ``key: value`` line per entry (lists summarised)."""
    if as_json:
        echo_json(payload)
        return
    for key, value in payload.items():
        if key == "history" and isinstance(value, list):
            last = value[-1] if value else {}
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items())
            typer.echo(f"history: {len(value)} epoch{'' if len(value) == 1 else 's'}; last: {shown}")
        elif isinstance(value, dict):
            typer.echo(f"{key}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in value.items()))
        else:
            typer.echo(f"{key}: {value}")


@train_app.command("mine")
def mine_command(
    features: Path = typer.Argument(..., help="HDF5 feature file of the unlabelled collection."),
    output: Path = typer.Option(..., "--output", "-o", help="Mined-pairs file to write (HDF5)."),
    teacher: str = typer.Option("auto", help="auto (visil for 3840-d ResNet-50 regions, else chamfer) | chamfer | "
                                "visil | visil_symmetric | PATH of a trained fg-att student run (iterating: a "
                                "student is the next teacher)."),
    candidates: int = typer.Option(16, help="Nearest videos per anchor by the cheap global similarity."),
    positives: int = typer.Option(4, help="Candidates with the highest teacher similarity kept as positives."),
    random_negatives: int = typer.Option(8, help="Random videos per anchor scored as negatives."),
    seed: int = typer.Option(0, help="Seed of the random negatives."),
    max_frames: int = typer.Option(300, help="Videos are cut to this many frames."),
    faiss_index: str = typer.Option("Flat", help="FAISS index_factory spec of the candidate search."),
    device: str = typer.Option("cpu", help="Device of the teacher."),
    restart: bool = typer.Option(False, help="Start over instead of resuming an existing output file."),
    progress: Optional[bool] = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """Score candidate pairs with a teacher and store per-anchor pools of positives and negatives.

    Examples:

    \b
      dnsvr train mine features.h5 -o pairs.h5
      dnsvr train mine features.h5 -o pairs.h5 --teacher runs/fg_att   # a trained student as the teacher
    """
    from dnsvr.train.mining import MinedPairs, MiningError, MiningParams, mine
    from dnsvr.weights import WeightsUnavailableError

    params = MiningParams(candidates=candidates, positives=positives, random_negatives=random_negatives,
                          seed=seed, max_frames=max_frames, faiss_index=faiss_index)
    try:
        out = mine(features, output, teacher, params, device=device, resume=not restart, progress=progress)
    except (MiningError, FileNotFoundError, ValueError, WeightsUnavailableError) as exc:
        fail(str(exc))
    _report(MinedPairs(out).summary(), as_json)


@train_app.command("features")
def features_command(
    index: Path = typer.Argument(..., help="A dnsvr index built with the lite bundle."),
    output: Path = typer.Option(..., "--output", "-o", help="HDF5 feature file to write."),
) -> None:
    """Write the base features an index keeps to a feature file (train on an indexed collection).

    Examples:

    \b
      dnsvr train features my.index -o features.h5
    """
    from dnsvr.train.collection import features_from_index

    try:
        typer.echo(str(features_from_index(index, output)))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


@train_app.command("info")
def info_command(pairs: Path = typer.Argument(..., help="Mined-pairs file."), as_json: bool = _JSON) -> None:
    """Counts and teacher similarity statistics of a mined-pairs file.

    Examples:

    \b
      dnsvr train info pairs.h5 --json
    """
    from dnsvr.train.mining import MinedPairs, MiningError

    try:
        _report(MinedPairs(pairs).summary(), as_json)
    except (MiningError, FileNotFoundError) as exc:
        fail(str(exc))


@train_app.command("student")
def student_command(
    type: str = typer.Option(..., "--type", metavar="fg-att|fg-bin|cg", help="The student to distil."),
    pairs: Path = typer.Option(..., help="Mined-pairs file (dnsvr train mine)."),
    features: Path = typer.Option(..., help="The students' features: the file the pairs were mined on, or another "
                                  "one with the same video ids (e.g. 512-d whitened vs the teacher's 3840-d)."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder (checkpoints, final weights)."),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(32, help="Triplets per step."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 1e-4 fine, 1e-5 coarse)."),
    weight_decay: float = typer.Option(0.0),
    r_parameter: float = typer.Option(1e-3, help="Weight of the similarity regularisation (fine students)."),
    augmentation: bool = typer.Option(True, "--augmentation/--no-augmentation"),
    seed: int = typer.Option(0),
    validation_fraction: float = typer.Option(0.0, help="Anchors held out; the best epoch is kept."),
    itq: str = typer.Option("fit", help="fg-bin init: fit | published | PATH.npz | none."),
    network: str = typer.Option("{}", help="JSON of extra network arguments, e.g. '{\"netvlad_clusters\": 32}'."),
    init: Optional[Path] = typer.Option(None, help="Start from these weights (safetensors / .pth)."),
    netvlad_init: str = typer.Option("kmeans", help="cg: NetVLAD clusters from k-means of the collection's frame "
                                     "vectors (kmeans) or the reference's random ones (random)."),
    coarse_bias_init: Optional[float] = typer.Option(
        1.0, help="cg: initial output LayerNorm bias (1.0 maps the untrained cosine s to s/2+0.5, the targets' "
        "range); --coarse-bias-init 0 is the reference's init."),
    fit_coarse_bias: bool = typer.Option(True, "--fit-coarse-bias/--no-fit-coarse-bias",
                                         help="cg: before the first step, fit the output bias so the start's "
                                         "similarities match the teacher's on the training pairs (L1)."),
    val_benchmark: Optional[str] = typer.Option(None, help="Validate every epoch on a benchmark (FIVR-5K, "
                                                "CC_WEB_VIDEO, SVD, EVVE, custom) and keep the best epoch."),
    val_features: Optional[Path] = typer.Option(None, help="Feature file of the validation benchmark's videos."),
    val_ground_truth: Optional[Path] = typer.Option(None, help="custom benchmark: {query: {video: label}} JSON."),
    val_max_queries: Optional[int] = typer.Option(None, help="Validate on the first N queries only."),
    in_memory: Optional[bool] = typer.Option(None, "--in-memory/--stream",
                                             help="Load all features into memory (default: files < 4 GiB)."),
    resume: bool = typer.Option(False, help="Continue the run in --output."),
    device: str = typer.Option("cpu"),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bfloat16 autocast on CUDA."),
    progress: Optional[bool] = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """Distil one student from the teacher similarities of mined pairs.

    Examples:

    \b
      dnsvr train student --type fg-att --pairs pairs.h5 --features features.h5 -o runs/fg_att
      dnsvr train student --type cg --pairs pairs.h5 --features features.h5 -o runs/cg --epochs 30
    """
    from dnsvr.train.students import StudentTrainConfig, train_student
    from dnsvr.train.teachers import load_state_dict

    try:
        cfg = StudentTrainConfig(type=type, epochs=epochs, batch_size=batch_size, learning_rate=lr,
                                 weight_decay=weight_decay, r_parameter=r_parameter, augmentation=augmentation,
                                 seed=seed, validation_fraction=validation_fraction, amp=amp, itq=itq,
                                 in_memory=in_memory, network=json.loads(network),
                                 coarse_bias_init=coarse_bias_init or None, netvlad_init=netvlad_init,
                                 fit_coarse_bias=fit_coarse_bias)
        validator = None
        if val_benchmark is not None:
            from dnsvr.train.validation import benchmark_validator

            if val_features is None:
                fail("--val-benchmark needs --val-features (the benchmark videos' feature file)")
            extra = {"ground_truth": str(val_ground_truth)} if val_ground_truth else {}
            validator = benchmark_validator(val_features, val_benchmark, type, max_queries=val_max_queries,
                                            device=device, **extra)
        result = train_student(pairs, features, output, cfg, resume=resume, device=device, progress=progress,
                               init_state=load_state_dict(init) if init else None, validator=validator)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        fail(str(exc))
    _report({"output": str(result.output_dir), "history": result.history}, as_json)


@train_app.command("selector")
def selector_command(
    pairs: Path = typer.Option(..., help="Mined-pairs file."),
    features: Path = typer.Option(..., help="The feature file."),
    fine: Path = typer.Option(..., help="Fine student run folder."),
    coarse: Path = typer.Option(..., help="Coarse student run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder."),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-4),
    threshold: float = typer.Option(0.2, help="Label 1 when |fine/2+0.5 - coarse| exceeds it."),
    positive_share: Optional[float] = typer.Option(None, help="Instead of --threshold: label 1 this share of the "
                                                   "pairs (those where fine and coarse disagree most), e.g. 0.1."),
    pairs_per_class: Optional[int] = typer.Option(None, help="Balanced samples per class and epoch (default: the "
                                                  "smaller class's size, as the reference)."),
    seed: int = typer.Option(0),
    validation_fraction: float = typer.Option(0.0),
    in_memory: Optional[bool] = typer.Option(None, "--in-memory/--stream",
                                             help="Load all features into memory (default: files < 4 GiB)."),
    resume: bool = typer.Option(False),
    device: str = typer.Option("cpu"),
    progress: Optional[bool] = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """Train the selector network for a (coarse, fine) student pair.

    Examples:

    \b
      dnsvr train selector --pairs pairs.h5 --features features.h5 --fine runs/fg_att --coarse runs/cg -o runs/sel
    """
    from dnsvr.train.selector import SelectorTrainConfig, train_selector

    try:
        cfg = SelectorTrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, threshold=threshold,
                                  positive_share=positive_share, pairs_per_class=pairs_per_class, seed=seed,
                                  validation_fraction=validation_fraction, in_memory=in_memory)
        result = train_selector(pairs, features, output, fine, coarse, cfg, resume=resume, device=device,
                                progress=progress)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    _report({"output": str(result.output_dir), "labels": result.config["labels"], "history": result.history},
            as_json)


@train_app.command("itq")
def itq_command(
    features: Path = typer.Argument(..., help="Feature file to fit on."),
    output: Path = typer.Option(..., "--output", "-o", help="The .npz to write ({'proj': W})."),
    bits: Optional[int] = typer.Option(None, help="Code length (default: the feature dims)."),
    max_vectors: int = typer.Option(200_000, help="Region vectors sampled for the fit."),
    seed: int = typer.Option(0),
) -> None:
    """Fit an ITQ projection (the binarization student's initialisation).

    Examples:

    \b
      dnsvr train itq features.h5 -o itq.npz
    """
    from dnsvr.train.itq import fit_itq, sample_regions, save_itq

    try:
        w = fit_itq(sample_regions(features, max_vectors, seed), bits=bits, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(str(save_itq(output, w)))


@train_app.command("bundle")
def bundle_command(
    fine: Path = typer.Option(..., help="Fine student run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write."),
    coarse: Optional[Path] = typer.Option(None, help="Coarse student run folder."),
    selector: Optional[Path] = typer.Option(None, help="Selector run folder."),
    base: Optional[str] = typer.Option(None, help="Bundle whose backbone + whitening made the features "
                                       "(e.g. the index's bundle folder); none if whitened elsewhere."),
    backbone: Optional[str] = typer.Option(None, help="Backbone name when --base is not given."),
    name: str = typer.Option("trained"),
    calibrate: Optional[Path] = typer.Option(None, help="Mined pairs (best of videos the students did not train "
                                             "on) to fit the coarse scores onto the fine scale; needs --coarse "
                                             "and --calibrate-features."),
    calibrate_features: Optional[Path] = typer.Option(None, help="The feature file of the --calibrate pairs."),
) -> None:
    """Assemble trained students and selector into a bundle an index can use.

    Examples:

    \b
      dnsvr train bundle --fine runs/fg_att --coarse runs/cg --selector runs/sel --base my.index/bundle -o my_bundle
      dnsvr train bundle --fine runs/fg_att --coarse runs/cg --calibrate sel_pairs.h5 --calibrate-features more.h5 ...
      dnsvr index attach my.index my_bundle trained.index
    """
    from dnsvr.train.export import build_bundle, fit_coarse_calibration

    if calibrate is not None and (coarse is None or calibrate_features is None):
        fail("--calibrate needs --coarse and --calibrate-features")
    try:
        calibration = (fit_coarse_calibration(fine, coarse, calibrate, calibrate_features)
                       if calibrate is not None and coarse is not None and calibrate_features is not None else None)
        bundle = build_bundle(fine, coarse, selector, base=base, name=name, backbone=backbone,
                              coarse_calibration=calibration)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(str(bundle.save(output)))


@train_app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Student or selector run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="The .pth to write ({'model': state_dict})."),
) -> None:
    """Export a trained network in the reference code's checkpoint layout.

    Examples:

    \b
      dnsvr train export runs/fg_att -o fg_att.pth
    """
    from dnsvr.train.export import export_reference_checkpoint

    try:
        typer.echo(str(export_reference_checkpoint(run, output)))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


# what `train whitening` and `train run` share: the index, the bundle, the collection, the work folder, the copies
_RECIPE_INDEX = typer.Argument(..., help="A lite index: its backbone, whitening and scoring, and (without --videos) "
                               "the collection to train on.")
_RECIPE_OUTPUT = typer.Option(..., "--output", "-o", help="Bundle folder to write.")
_RECIPE_VIDEOS = typer.Option(None, help="Train on this folder of videos instead of the index's collection "
                              "(represented with the index's backbone and whitening).")
_RECIPE_WORK = typer.Option(None, help="Work folder: caches, pairs, training runs (default: BUNDLE_DIR.work beside "
                            "the bundle; `train whitening` and `train run` share its first stages). A rerun resumes "
                            "there.")
_RECIPE_COPIES = typer.Option(2, help="Augmented copies per video (features extracted once).")


@train_app.command("whitening")
def whitening_command(
    index: Path = _RECIPE_INDEX,
    output: Path = _RECIPE_OUTPUT,
    videos: Optional[Path] = _RECIPE_VIDEOS,
    work: Optional[Path] = _RECIPE_WORK,
    copies: int = _RECIPE_COPIES,
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda, for extraction."),
    restart: bool = typer.Option(False, help="Forget a previous run in the work folder instead of resuming it."),
    progress: Optional[bool] = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """Learn a whitening from augmented copies of the collection's own videos (no labels), as a bundle.

    Decodes each video once to make augmented copies (the same transformations as `train run`), pairs
    the regions of each video with their matches in its copies, and learns which feature directions
    those transformations move: the bundle is the index's own (same scoring and coarse stage) with a
    whitening that discounts them. Then `dnsvr index attach` builds the new index from the stored
    features, decoding nothing. See docs/training.md.

    Examples:

    \b
      dnsvr train whitening my.index -o my_bundle
      dnsvr index attach my.index my_bundle learned.index
    """
    from dnsvr.train.learned_whitening import LearnedWhiteningError, train_whitening
    from dnsvr.train.recipe import RecipeError

    try:
        result = train_whitening(index, output, videos=videos, work=work, copies=copies, seed=seed, device=device,
                                 progress=progress, restart=restart)
    except (RecipeError, LearnedWhiteningError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    _report({"bundle": str(result.bundle), "work": str(result.work), "videos": result.videos,
             "copies": result.copies, "pairs": result.pairs, "chunk_pairs": result.chunk_pairs,
             "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
             "next": f"dnsvr index attach {index} {result.bundle} NEW_INDEX"}, as_json)


@train_app.command("run")
def run_command(
    index: Path = _RECIPE_INDEX,
    output: Path = _RECIPE_OUTPUT,
    videos: Optional[Path] = _RECIPE_VIDEOS,
    work: Optional[Path] = _RECIPE_WORK,
    copies: int = _RECIPE_COPIES,
    holdout: float = typer.Option(0.2, help="Share of the videos held out to label the selector."),
    teacher_epochs: int = typer.Option(10, help="Epochs of the self-supervised teacher."),
    batch_size: int = typer.Option(16, help="Teacher: videos per step (in-batch negatives)."),
    fine_epochs: int = typer.Option(2, help="Epochs of the fine student (it starts from the teacher)."),
    coarse_epochs: int = typer.Option(5, help="Epochs of the coarse student (lr 1e-5, k-means NetVLAD start)."),
    selector_epochs: int = typer.Option(10, help="Epochs of the selector."),
    result: str = typer.Option("auto", help="The bundle to write: auto (the better at finding the held-out "
                               "videos' copies: the students, or the index's bundle with a whitening learned from "
                               "the copies), students, or whitening."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda: the GPU path for large collections)."),
    restart: bool = typer.Option(False, help="Forget a previous run in the work folder instead of resuming it."),
    progress: Optional[bool] = _PROGRESS,
    as_json: bool = _JSON,
) -> None:
    """The whole self-supervised recipe in one command: augmented copies, teacher, students, selector, bundle.

    Decodes each video once to make augmented copies (crop, flip, colour, blur, grayscale, low quality,
    text, logos, speed, drops, shuffles, pauses, reversal, picture-in-picture), trains a fine teacher on
    them without labels, distils the fine and coarse students and the selector from it, and writes a
    bundle for `dnsvr index attach`: by default the better, at finding held-out videos' copies, of the
    students and of the index's own bundle with a whitening learned from the copies (`--result`).
    Interrupted, the same command continues where it stopped.

    Examples:

    \b
      dnsvr train run my.index -o my_bundle
      dnsvr index attach my.index my_bundle trained.index
      dnsvr train run my.index -o my_bundle --videos more_videos/ --device cuda
    """
    from dataclasses import replace

    from dnsvr.train.recipe import RecipeConfig, RecipeError, run_recipe
    from dnsvr.train.selfsup import TeacherTrainConfig

    def announce(stage: str, number: int, total: int) -> None:
        if progress is not False:
            typer.echo(f"[{number}/{total}] {stage}", err=True)

    try:
        cfg = RecipeConfig(copies=copies, holdout=holdout, seed=seed, fine_epochs=fine_epochs,
                           coarse_epochs=coarse_epochs, selector_epochs=selector_epochs, result=result,
                           teacher=replace(TeacherTrainConfig(), epochs=teacher_epochs, batch_size=batch_size,
                                           seed=seed))
        outcome = run_recipe(index, output, videos=videos, work=work, config=cfg, device=device, progress=progress,
                             restart=restart, on_stage=announce)
    except (RecipeError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    _report({"bundle": str(outcome.bundle), "work": str(outcome.work), "videos": outcome.videos,
             "copies": outcome.copies, "result": outcome.result,
             "validation": {k: round(v, 4) for k, v in outcome.validation.items()},
             "seconds": {k: round(v, 1) for k, v in outcome.seconds.items()},
             "next": f"dnsvr index attach {index} {outcome.bundle} NEW_INDEX"}, as_json)
