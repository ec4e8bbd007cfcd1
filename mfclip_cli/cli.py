"""Command-line interface: thin verbs that parse options, call one core function and render its result."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import __version__
from .data.layouts import LAYOUTS
from .data.protocols import PROTOCOLS
from .errors import MfclipError
from .faces.types import DETECTOR_NAMES, POLICY_DETECTORS
from .model.config import available_presets
from .verbs import err_console
from .verbs import fail as _fail

app = typer.Typer(
    name="mfclip",
    help="Tell real face images and videos from diffusion/GAN-generated or edited ones (MFCLIP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"mfclip {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """mfclip: MFCLIP face forgery detection. Offline by default: no model hub is contacted unless --online."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@app.command()
def scan(
    paths: Annotated[list[str] | None, typer.Argument(help="Files, folders (recursive) or glob patterns.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report (JSON) here; '-' = stdout.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write one CSV row per face here.")] = None,
    jsonl_out: Annotated[Path | None, typer.Option("--jsonl", help="Stream one JSON line per item as it finishes.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page (pictures embedded, opens offline) here.")] = None,
    html_thumbs: Annotated[int, typer.Option("--html-thumbs", help="--html: items shown with pictures (flagged and uncertain first); the rest are listed without.")] = 500,
    explain: Annotated[bool, typer.Option("--explain", help="Per face: heat map of what drove the score (torch: Grad-CAM, onnx: occlusion) and the noise branch's patch; needs --explain-dir.")] = False,
    explain_dir: Annotated[Path | None, typer.Option("--explain-dir", help="--explain: folder for the overlay and heat-map PNGs (paths listed in the reports).")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="MFCLIP checkpoint (.safetensors); default: the shipped model.")] = None,
    backend: Annotated[str, typer.Option(help="auto (ONNX export beside the checkpoint on CPU, else torch) | torch | onnx")] = "auto",
    model_dir: Annotated[str | None, typer.Option("--model", help="Exported model folder (with --backend onnx).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Faces gathered across files per classifier batch (on CPU it runs as single-threaded tasks of at most 8 faces, shared by the workers).")] = 32,
    workers: Annotated[int | None, typer.Option(help="Worker threads that decode, detect, crop and classify (default: one per CPU).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold on P(fake); default: the checkpoint's.")] = None,
    uncertain_band: Annotated[float, typer.Option(help="Scores within this distance of the threshold are 'uncertain'.")] = 0.0,
    max_faces: Annotated[int | None, typer.Option(help="Score at most this many faces per image/frame (largest first).")] = None,
    min_face: Annotated[int | None, typer.Option(help="Ignore faces whose box is smaller (pixels).")] = None,
    no_face: Annotated[str, typer.Option(help="skip: report no_face | full: score the whole image.")] = "skip",
    detector: Annotated[str | None, typer.Option(help="Override the checkpoint's face detector: " + " | ".join(DETECTOR_NAMES) + ".")] = None,
    fps: Annotated[float | None, typer.Option(help="Video: frames sampled per second.")] = 1.0,
    frames: Annotated[int | None, typer.Option(help="Video: at most this many sampled frames.")] = 32,
    video_top: Annotated[float, typer.Option(help="Video score = mean of the top fraction of frame scores.")] = 0.25,
    from_file: Annotated[str | None, typer.Option("--from-file", help="Read paths, one per line, from a file ('-' = stdin).")] = None,
    shard_opt: Annotated[str | None, typer.Option("--shard", help="K/N: scan only the K-th of N shares of the sorted inputs.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this many pixels.")] = 100_000_000,
    no_provenance: Annotated[bool, typer.Option("--no-provenance", help="Do not read what files claim about their origin (C2PA manifests, generator metadata); reports then carry provenance null.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table or progress; only errors.")] = False,
) -> None:
    """Score every face in images and videos. Exit 0: nothing flagged, 1: something flagged fake,
    2: usage/fatal error (nothing scanned), 3: nothing flagged but some inputs could not be read,
    4: a report could not be written (the others were), 130/143: stopped by SIGINT/SIGTERM (partial report)."""
    from .verbs import ScanSignals, scan_verb

    signals = ScanSignals()  # first: a signal during start-up must already end cleanly
    try:
        scan_verb(signals, paths=paths, json_out=json_out, csv_out=csv_out, jsonl_out=jsonl_out, html_out=html_out,
              html_thumbs=html_thumbs, explain=explain, explain_dir=explain_dir, weights=weights,
              backend=backend, model_dir=model_dir, device=device, batch_size=batch_size, workers=workers,
              threshold=threshold, uncertain_band=uncertain_band, max_faces=max_faces, min_face=min_face,
              no_face=no_face, detector=detector, fps=fps, frames=frames, video_top=video_top,
              from_file=from_file, shard_opt=shard_opt, max_pixels=max_pixels, provenance=not no_provenance,
              quiet=quiet)
    except KeyboardInterrupt:
        name = signal.Signals(signals.received[0]).name if signals.received else "SIGINT"
        err_console.print(f"[yellow]interrupted ({name}) before the scan started: nothing was scanned and no "
                          f"report was written or truncated[/]", highlight=False)
        raise typer.Exit(128 + (signals.received[0] if signals.received else signal.SIGINT)) from None
    finally:
        signals.restore()


@app.command()
def train(
    data: Annotated[str | None, typer.Option("--data", help="Dataset root (generic, GenFace or DiFF tree) or a CSV manifest.")] = None,
    protocol: Annotated[str, typer.Option(help=" | ".join(PROTOCOLS))] = "in-domain",
    out: Annotated[Path | None, typer.Option("--out", help="Run folder to create.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder after a crash.")] = None,
    test_generators: Annotated[str | None, typer.Option(help="cross-generator: comma-separated held-out generators.")] = None,
    train_generators: Annotated[str | None, typer.Option(help="cross-generator: comma-separated training generators.")] = None,
    train_kind: Annotated[str | None, typer.Option(help="cross-forgery: the forgery kind trained on.")] = None,
    test_data: Annotated[str | None, typer.Option(help="cross-dataset: the test dataset root.")] = None,
    layout: Annotated[str, typer.Option(help=" | ".join(LAYOUTS))] = "auto",
    preset: Annotated[str, typer.Option(help="Model preset: " + " | ".join(available_presets()))] = "effnet-lite0",
    clip_weights: Annotated[str | None, typer.Option(help="Local CLIP weights file for ViT presets (instead of the 'openai' tag).")] = None,
    online: Annotated[bool, typer.Option("--online", help="Allow downloading pretrained weights from the model hub.")] = False,
    spa: Annotated[str | None, typer.Option(help="pair | matrix | none")] = None,
    branches: Annotated[str | None, typer.Option(help="both | image | noise")] = None,
    fusion: Annotated[str | None, typer.Option(help="sum | concat")] = None,
    prompt_levels: Annotated[str | None, typer.Option(help="Prompt levels used, e.g. 1,2,3,4")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="LoRA rank on the CLIP towers (0 = off).")] = None,
    noise_residual: Annotated[str | None, typer.Option(help="What the noise branch reads: srm (SRM bank) | npr (x - up(down(x)) residuals).")] = None,
    colour_norm: Annotated[str | None, typer.Option(help="Image-branch input: fixed (preset mean/std) | per-crop (each channel standardised over the face, so brightness, contrast and colour cast carry no signal).")] = None,
    image_patches: Annotated[int | None, typer.Option(help="Image tower input: 0 = the whole crop; N = an N x N grid of --image-patch-px squares, embeddings averaged (local evidence only).")] = None,
    image_patch_px: Annotated[int | None, typer.Option(help="Side of each image patch in pixels of the model input (with --image-patches).")] = None,
    image_init: Annotated[str | None, typer.Option(help="Image tower start for timm presets: efficientnet-lite0 (ImageNet) | random.")] = None,
    freeze_image: Annotated[bool, typer.Option(help="Freeze the image tower.")] = False,
    freeze_text: Annotated[bool, typer.Option(help="Freeze the text tower.")] = False,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (training stops early after --patience epochs without a better validation loss).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 24,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    patience: Annotated[int, typer.Option(help="Early-stopping patience on validation loss.")] = 5,
    accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="At most this many optimizer steps per epoch (quick runs).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the test sets' AUC 95% CI (0 = off).")] = 200,
    augment: Annotated[str, typer.Option(help="Training augmentation: default | strong (re-draws JPEG quality and sharpness for most images) | light (flip, some blur; for --parity on).")] = "default",
    parity: Annotated[str, typer.Option(help="off | on: every training image, real or fake, gets a resize -> JPEG history drawn from one distribution (incl. the external suite's 256² q90) before its face is cut | sharp: on, with 30 % of images unsharp-masked after the resize | retouch: sharp, with a further 20 % smoothed by an edge-preserving (bilateral) filter.")] = "off",
    balance: Annotated[str, typer.Option(help="Training sampler: none | sources (each class half the draws; sources weighted by the square root of their size).")] = "none",
    target_fpr: Annotated[float | None, typer.Option("--target-fpr", help="Choose the threshold for this false-positive rate on the validation reals (default: EER).")] = None,
    fpr_per_source: Annotated[bool, typer.Option("--fpr-per-source", help="With --target-fpr F: no real source of the validation set is flagged more than F (the highest of the sources' thresholds), not only all reals pooled.")] = False,
    pseudo_fakes: Annotated[str, typer.Option(help="none, or kinds joined by '+', each adding a quarter of the training reals as fakes: sbi (self-blended) | sbi-soft (self-blended, the pasted copy only softened, never sharpened) | swap (another real's inner face pasted in) | ae (reconstructed by an autoencoder trained on the reals), e.g. sbi+swap.")] = "none",
    weight_average: Annotated[str, typer.Option(help="Weights validated and saved: off (the optimizer's) | swa (equal average of the weights after every step from the second epoch on) | ema (moving average, decay 0.995, same start).")] = "off",
    teacher: Annotated[list[Path] | None, typer.Option("--teacher", help="Distil from this checkpoint (repeat for several; their P(fake) is averaged). Each must use this run's crop and preprocessing flags.")] = None,
    distill_weight: Annotated[float, typer.Option(help="With --teacher: share of the classification loss taken from the teachers' P(fake) instead of the labels (0-1).")] = 0.5,
    train_fakes: Annotated[str, typer.Option(help="Fakes trained on: all | pseudo (only the --pseudo-fakes made from the training reals; the dataset's own fakes are kept for validation and test, so nothing of their sources' framing or content can be learned).")] = "all",
    test_frac: Annotated[float, typer.Option(help="in-domain / cross-generator / cross-forgery: share of groups held out for test.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed (recorded).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    workers: Annotated[int, typer.Option(help="Data-loader worker processes.")] = 2,
    crop: Annotated[str, typer.Option(help="Face crops: " + " | ".join(POLICY_DETECTORS) + " (none: pre-aligned data).")] = "retinaface",
    crop_margin: Annotated[float | None, typer.Option(help="Margin around the aligned face (fraction).")] = None,
    run: Annotated[int | None, typer.Option(help="leave-source-out: train only this run (1-based).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables.")] = False,
) -> None:
    """Train MFCLIP under a protocol; writes a self-describing run folder (resumable)."""
    from .train import TrainOptions, load_run_options, run_training

    def csv_list(text: str | None) -> tuple[str, ...] | None:
        return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None

    try:
        if resume is not None:
            opts = load_run_options(resume)
        else:
            if not data or out is None:
                raise MfclipError("train needs --data ROOT and --out RUN_DIR (or --resume RUN_DIR)")
            overrides = {"spa": spa, "branches": branches, "fusion": fusion, "lora_rank": lora_rank,
                         "noise_residual": noise_residual, "colour_norm": colour_norm,
                         "pretrained": clip_weights, "image_init": image_init,
                         "image_patches": image_patches, "image_patch_px": image_patch_px,
                         "prompt_levels": tuple(int(x) for x in prompt_levels.split(",")) if prompt_levels else None}
            opts = TrainOptions(
                data=data, out=str(out), protocol=protocol, layout=layout, test_generators=csv_list(test_generators),
                train_generators=csv_list(train_generators), train_kind=train_kind, test_data=test_data,
                preset=preset, model_overrides={k: v for k, v in overrides.items() if v is not None},
                epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed, device=device,
                workers=workers, accum=accum, crop=crop, crop_margin=crop_margin, max_steps=max_steps,
                freeze_image=freeze_image, freeze_text=freeze_text, online=online, run=run, bootstrap=bootstrap,
                augment=augment, test_frac=test_frac, parity=parity, balance=balance, target_fpr=target_fpr,
                pseudo_fakes=pseudo_fakes, weight_average=weight_average, fpr_per_source=fpr_per_source,
                teachers=tuple(str(t) for t in teacher or ()), distill_weight=distill_weight,
                train_fakes=train_fakes)
        from .train_view import TrainView

        with TrainView(quiet=quiet, console=Console(), err_console=err_console) as view:
            result = run_training(opts, on_event=view.callback, resume=resume is not None)
    except MfclipError as exc:
        _fail(exc)
    if not quiet:
        for r in result.runs:
            Console().print(f"best checkpoint: {r.best_checkpoint} (epoch {r.best_epoch}, threshold {r.threshold:.3f})")


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[str, typer.Argument(help="MFCLIP checkpoint (.safetensors).")],
    data: Annotated[str | None, typer.Option("--data", help="Dataset root or CSV manifest.")] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="Folder whose every sub-folder is a dataset root: one table row per set, then mean AUC, min AUC and worst real-ACC.")] = None,
    layout: Annotated[str, typer.Option(help=" | ".join(LAYOUTS))] = "auto",
    split: Annotated[str | None, typer.Option(help="Evaluate only this split (train | val | test) of the data.")] = None,
    protocol: Annotated[str | None, typer.Option(help="Evaluate the test sets of a protocol (as in train).")] = None,
    test_generators: Annotated[str | None, typer.Option(help="cross-generator: held-out generators.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the protocol split.")] = 0,
    test_frac: Annotated[float | None, typer.Option(help="With --split: the run's test share (default: recorded in the checkpoint, else 0.2).")] = None,
    robustness: Annotated[bool, typer.Option("--robustness", help="Also evaluate under JPEG/blur/down-scale/re-encode.")] = False,
    standardize: Annotated[bool, typer.Option("--standardize", help="Resize + JPEG re-encode every input first.")] = False,
    calibrate: Annotated[str | None, typer.Option(help="Choose the threshold on this validation set and write a new checkpoint.")] = None,
    target_fpr: Annotated[float | None, typer.Option(help="With --calibrate: threshold at this false-positive rate (default: EER).")] = None,
    fpr_per_source: Annotated[bool, typer.Option("--fpr-per-source", help="With --target-fpr F: no real source of the calibration data is flagged more than F, not only all reals pooled.")] = False,
    calibrated_out: Annotated[str | None, typer.Option(help="With --calibrate: where to write the new checkpoint.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC 95% CI (0 = off).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write ROC/DET curves and score histograms here.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail when eval files overlap the checkpoint's training files.")] = False,
    batch_size: Annotated[int, typer.Option(help="Faces per batch.")] = 32,
    workers: Annotated[int, typer.Option(help="Decode/crop workers.")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables.")] = False,
) -> None:
    """AUC, AP, EER and ACC per generator, kind and family (+ robustness, calibration, plots)."""
    from .evaluate import EvalOptions, run_eval
    from .report.eval import render_eval, write_eval_files
    from .report.progress import progress_bar

    if (data is None) == (suite is None):
        _fail(MfclipError("pass either --data ROOT (one dataset) or --suite DIR (every sub-folder a dataset), "
                          "not both" if data is not None else "pass --data ROOT or --suite DIR"))
    if suite is not None:
        not_with_suite = {"--layout": layout != "auto", "--split": split is not None, "--protocol": protocol is not None,
                          "--test-generators": test_generators is not None, "--test-frac": test_frac is not None,
                          "--standardize": standardize, "--calibrate": calibrate is not None,
                          "--target-fpr": target_fpr is not None, "--fpr-per-source": fpr_per_source,
                          "--calibrated-out": calibrated_out is not None,
                          "--strict": strict}
        given = [name for name, used in not_with_suite.items() if used]
        if given:
            _fail(MfclipError(f"{', '.join(given)} do(es) not apply with --suite (each set is read with layout auto "
                              f"and scored whole); use --data ROOT for that"))
        _eval_suite(checkpoint, suite, bootstrap=bootstrap, seed=seed, batch_size=batch_size, workers=workers,
                    device=device, robustness=robustness, json_out=json_out, plots=plots, quiet=quiet)
        return
    assert data is not None
    try:
        opts = EvalOptions(
            checkpoint=checkpoint, data=data, layout=layout, split=split, protocol=protocol,
            test_generators=tuple(x.strip() for x in test_generators.split(",")) if test_generators else None,
            seed=seed, test_frac=test_frac, robustness=robustness, standardize=standardize, calibrate=calibrate,
            target_fpr=target_fpr, fpr_per_source=fpr_per_source, calibrated_out=calibrated_out,
            bootstrap=bootstrap, strict=strict,
            batch_size=batch_size, workers=workers, device=device)
        progress = progress_bar(err_console, enabled=not quiet and err_console.is_terminal)
        task = progress.add_task("eval", total=None)
        with progress:
            result = run_eval(opts, on_event=lambda _, p: progress.update(task, description=p["what"],
                                                                           completed=p["done"], total=p["total"]))
        result = write_eval_files(result, json_out=json_out, plots=plots)
    except MfclipError as exc:
        _fail(exc)
    if not quiet:
        render_eval(result, Console())


def _eval_suite(checkpoint: str, suite: str, *, bootstrap: int, seed: int, batch_size: int, workers: int,
                device: str, robustness: bool, json_out: Path | None, plots: Path | None, quiet: bool) -> None:
    """`eval --suite`: run the suite, write JSON and plots, render; exit 2 when no set could be scored."""
    from .evaluate import SuiteOptions, run_suite
    from .report.eval import render_suite, write_suite_files
    from .report.progress import progress_bar

    progress = progress_bar(err_console, enabled=not quiet and err_console.is_terminal)
    task = progress.add_task("suite", total=None)

    def on_event(event: str, p: dict) -> None:
        if event in ("set", "set_done"):
            progress.update(task, description=p["set"], completed=0, total=None)
        else:
            stage = event if p.get("perturbation") is None else f"{event}:{p['perturbation']}"
            progress.update(task, description=f"{p['set']} · {stage}", completed=p["done"], total=p["total"])

    try:
        with progress:
            result = run_suite(SuiteOptions(checkpoint, suite, bootstrap=bootstrap, seed=seed, batch_size=batch_size,
                                            device=device, workers=workers, robustness=robustness),
                               on_event=on_event)
        written, plot_warnings = write_suite_files(result, json_out=json_out, plots=plots)
    except MfclipError as exc:
        _fail(exc)
    if not quiet:
        for w in plot_warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
        render_suite(result, Console(), plots=written)
    if result.summary.n_sets_scored == 0:
        _fail(MfclipError(f"no set of {suite} could be scored: "
                          + "; ".join(f"{s.name}: {s.error}" for s in result.sets)))


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="MFCLIP checkpoint (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (must not exist or be empty).")],
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write an fp16 graph (needs CUDA).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write a dynamically quantised int8 graph (CPU).")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Skip the text encoder even if the checkpoint has it.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """Export the image encoder (and text encoder) to ONNX, checked against torch before it is kept."""
    from .export import ExportOptions, run_export

    try:
        res = run_export(ExportOptions(checkpoint, str(out), opset=opset, fp16=fp16, int8=int8,
                                       text=False if no_text else None, overwrite=overwrite))
    except MfclipError as exc:
        _fail(exc)
    Console().print_json(json.dumps(res.to_json()))


@app.command()
def info(
    weights: Annotated[str | None, typer.Option("--weights", help="Describe this checkpoint instead of the default.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Versions, devices and ONNX Runtime providers that really work, and the weights found."""
    from .envinfo import collect_info, render_info

    data = collect_info(weights)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render_info(data, Console())


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MfclipError as exc:  # a core function raised outside a command's own handler
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling (e.g. during imports)
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
