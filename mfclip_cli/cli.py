"""Command-line interface: thin verbs that parse options, call one core function and render its result."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import MfclipError

app = typer.Typer(
    name="mfclip",
    help="Tell real face images and videos from diffusion/GAN-generated or edited ones (MFCLIP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


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


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise MfclipError(f"--shard takes K/N (e.g. 2/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise MfclipError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def _default_weights(backend: str, weights: str | None) -> str:
    from .paths import default_checkpoint

    if weights:
        return weights
    if backend == "onnx":
        raise MfclipError("--backend onnx needs --model DIR (a folder written by `mfclip export`)")
    ckpt = default_checkpoint()
    if not ckpt.is_file():
        raise MfclipError(f"the default checkpoint {ckpt} is missing; pass --weights CKPT")
    return str(ckpt)


@app.command()
def scan(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Files, folders (recursive) or glob patterns.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report (JSON) here; '-' = stdout.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write one CSV row per face here.")] = None,
    jsonl_out: Annotated[Optional[Path], typer.Option("--jsonl", help="Stream one JSON line per item as it finishes.")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="MFCLIP checkpoint (.safetensors); default: the shipped model.")] = None,
    backend: Annotated[str, typer.Option(help="torch | onnx")] = "torch",
    model_dir: Annotated[Optional[str], typer.Option("--model", help="Exported model folder (with --backend onnx).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Faces per classifier batch.")] = 32,
    workers: Annotated[int, typer.Option(help="Threads that decode, detect and crop ahead of the classifier.")] = 2,
    threshold: Annotated[Optional[float], typer.Option(help="Decision threshold on P(fake); default: the checkpoint's.")] = None,
    uncertain_band: Annotated[float, typer.Option(help="Scores within this distance of the threshold are 'uncertain'.")] = 0.0,
    max_faces: Annotated[Optional[int], typer.Option(help="Score at most this many faces per image/frame (largest first).")] = None,
    min_face: Annotated[Optional[int], typer.Option(help="Ignore faces whose box is smaller (pixels).")] = None,
    no_face: Annotated[str, typer.Option(help="skip: report no_face | full: score the whole image.")] = "skip",
    detector: Annotated[Optional[str], typer.Option(help="Override the checkpoint's face detector: retinaface | insightface | haar.")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Video: frames sampled per second.")] = 1.0,
    frames: Annotated[Optional[int], typer.Option(help="Video: at most this many sampled frames.")] = 32,
    video_top: Annotated[float, typer.Option(help="Video score = mean of the top fraction of frame scores.")] = 0.25,
    from_file: Annotated[Optional[str], typer.Option("--from-file", help="Read paths, one per line, from a file ('-' = stdin).")] = None,
    shard_opt: Annotated[Optional[str], typer.Option("--shard", help="K/N: scan only the K-th of N shares of the sorted inputs.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this many pixels.")] = 100_000_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table or progress; only errors.")] = False,
) -> None:
    """Score every face in images and videos. Exit 0: nothing flagged, 1: something flagged fake,
    2: usage/fatal error, 3: nothing flagged but some inputs could not be read."""
    from .report import JsonlWriter, exit_code_for, render_summary, render_table, write_csv, write_json
    from .scan import ScanOptions, run_scan

    if not paths and not from_file:
        _fail(MfclipError("give at least one path, or --from-file LIST"))
    try:
        opts = ScanOptions(
            backend=backend, device=device, batch_size=batch_size, workers=workers, threshold=threshold,
            uncertain_band=uncertain_band, max_faces=max_faces, min_face=min_face, no_face=no_face,
            detector=detector, fps=fps, frames=frames, video_top_frac=video_top, max_pixels=max_pixels,
            shard=_parse_shard(shard_opt),
        )
        ckpt = _default_weights(backend, model_dir if backend == "onnx" else weights)
    except MfclipError as exc:
        _fail(exc)

    to_stdout = json_out is not None and str(json_out) == "-"
    out_console = Console(stderr=to_stdout)
    show_progress = not quiet and err_console.is_terminal
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # job schedulers stop with SIGTERM

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err_console, disable=not show_progress, transient=True)
    task = progress.add_task("scan", total=None)
    jsonl = JsonlWriter(jsonl_out) if jsonl_out else None

    def on_item(item) -> None:
        if jsonl:
            jsonl.write(item)
        progress.advance(task)

    try:
        with progress:
            result = run_scan(paths or [], ckpt, opts, from_file=from_file, on_item=on_item,
                              on_total=lambda n: progress.update(task, total=n))
    except MfclipError as exc:
        _fail(exc)
    finally:
        if jsonl:
            jsonl.close()

    if json_out is not None:
        if to_stdout:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        else:
            write_json(result, json_out)
    if csv_out is not None:
        write_csv(result, csv_out)
    if not quiet:
        render_table(result, out_console)
        render_summary(result, out_console)
        if result.interrupted:
            err_console.print("[yellow]interrupted: the report holds the items finished so far[/]")
    raise typer.Exit(int(exit_code_for(result.summary())))


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
    from .export import export_model

    try:
        res = export_model(checkpoint, str(out), opset=opset, fp16=fp16, int8=int8,
                           text=False if no_text else None, overwrite=overwrite)
    except MfclipError as exc:
        _fail(exc)
    Console().print_json(json.dumps(res.to_dict()))


@app.command()
def info(
    weights: Annotated[Optional[str], typer.Option("--weights", help="Describe this checkpoint instead of the default.")] = None,
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


if __name__ == "__main__":
    main()
