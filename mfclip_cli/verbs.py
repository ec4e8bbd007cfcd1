"""The shell of the CLI verbs: the error line and exit code, and `mfclip scan`'s signals, streamed reports and
exit code around :func:`~mfclip_cli.scan.run_scan` (cli.py parses the options and calls these). The scan reports
its inputs, start and each finished item as events; everything written to disk is written here, from them."""

from __future__ import annotations

import signal
from dataclasses import replace

import typer
from rich.console import Console

from .errors import MfclipError

err_console = Console(stderr=True)


def fail(exc: Exception) -> None:
    """Print ``error: …`` on stderr and exit 2."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise MfclipError(f"--shard takes K/N (e.g. 2/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise MfclipError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def default_weights(backend: str, weights: str | None) -> str:
    from .paths import default_checkpoint

    if weights:
        return weights
    if backend == "onnx":
        raise MfclipError("--backend onnx needs --model DIR (a folder written by `mfclip export`)")
    ckpt = default_checkpoint()
    if not ckpt.is_file():
        raise MfclipError(f"the default checkpoint {ckpt} is missing; pass --weights CKPT")
    return str(ckpt)


class ScanSignals:
    """SIGINT and SIGTERM during a scan: before the scan starts they abort start-up (KeyboardInterrupt);
    once it runs they set ``stop``, so the scan ends after the item in hand and every report is written."""

    def __init__(self) -> None:
        import threading

        self.stop = threading.Event()
        self.received: list[int] = []
        self.scanning = False
        self._before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._before:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        if self.scanning:
            self.stop.set()  # further signals change nothing: the partial report is being written
        elif len(self.received) == 1:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def scan_verb(signals: ScanSignals, *, paths, json_out, csv_out, jsonl_out, html_out, html_thumbs, explain,
          explain_dir, weights, backend, model_dir, device,
          batch_size, workers, threshold, uncertain_band, max_faces, min_face, no_face, detector, fps, frames,
          video_top, from_file, shard_opt, max_pixels, provenance, quiet) -> None:
    from .media import quiet_video_decoders
    from .report import (
        ExplanationWriter,
        JsonlWriter,
        WriteFailure,
        check_targets_against_inputs,
        exit_code_for,
        plan_report_targets,
        render_table,
        safe_text,
        write_reports,
    )
    from .scan import ScanOptions, run_scan

    if not paths and not from_file:
        fail(MfclipError("give at least one path, or --from-file LIST"))
    try:
        if model_dir is not None and backend != "onnx":
            raise MfclipError(f"--model DIR runs an exported model and needs --backend onnx (got --backend "
                              f"{backend}); for a checkpoint use --weights CKPT")
        if weights is not None and backend == "onnx":
            raise MfclipError("--backend onnx runs an exported folder: pass --model DIR instead of --weights")
        if explain and explain_dir is None:
            raise MfclipError("--explain needs --explain-dir DIR: the folder its overlay PNGs are written to")
        if explain_dir is not None and not explain:
            raise MfclipError("--explain-dir is where --explain writes its pictures; add --explain (or drop it)")
        if html_thumbs < 0:
            raise MfclipError(f"--html-thumbs must be >= 0 (0: no pictures), got {html_thumbs}")
        opts = ScanOptions(
            paths=tuple(paths or ()), from_file=from_file,
            backend=backend, device=device, batch_size=batch_size, workers=workers, threshold=threshold,
            uncertain_band=uncertain_band, max_faces=max_faces, min_face=min_face, no_face=no_face,
            detector=detector, fps=fps, frames=frames, video_top_frac=video_top, max_pixels=max_pixels,
            shard=parse_shard(shard_opt), explain=explain, provenance=provenance,
        )
        ckpt = default_weights(backend, model_dir if backend == "onnx" else weights)
        targets = plan_report_targets(json_out, csv_out, jsonl_out, path_list=from_file, html_out=html_out,
                                      explain_dir=explain_dir)
        # the reports are never inputs: a previous run's report found in a scanned folder is skipped
        opts = replace(opts, weights=ckpt, exclude=tuple(t.path for t in targets if not t.to_stdout))
    except MfclipError as exc:
        fail(exc)
    quiet_video_decoders()

    to_stdout = any(t.to_stdout for t in targets)
    out_console = Console(stderr=to_stdout)
    show_progress = not quiet and err_console.is_terminal

    from .report.progress import progress_bar

    progress = progress_bar(err_console, enabled=show_progress, description="scanning")
    task = progress.add_task("scan", total=None)
    jsonl_target = next((t for t in targets if t.option == "--jsonl"), None)
    jsonl = JsonlWriter(jsonl_target.path) if jsonl_target else None
    failures: list[WriteFailure] = []
    pictures = ExplanationWriter(explain_dir) if explain else None

    def stream_failed(exc: OSError) -> None:
        nonlocal jsonl
        failures.append(WriteFailure(jsonl_target, exc.strerror or str(exc)))
        jsonl.close()
        jsonl = None  # the scan goes on; --json/--csv still get every result

    def on_total(n: int) -> None:
        progress.update(task, total=n)
        signals.scanning = True
        if jsonl is not None:
            try:
                jsonl.open()  # truncated only now that the scan really starts
            except OSError as exc:
                stream_failed(exc)

    def on_item(index: int, item) -> None:
        if pictures is not None:
            item = pictures(index, item)  # the pictures' paths go into every report, the stream's too
        if jsonl is not None:
            try:
                jsonl.write(item)
            except OSError as exc:
                stream_failed(exc)
        if quiet and item.error is not None:  # -q still shows errors, one line per file
            err_console.print(f"error: {safe_text(item.error['message'])} [{item.error['code']}]",
                              markup=False, highlight=False, soft_wrap=True)
        progress.advance(task)

    def on_event(event: str, p: dict) -> None:
        if event == "inputs":  # before any report is opened: a report never overwrites an input
            check_targets_against_inputs(targets, p["paths"])
        elif event == "total":
            on_total(p["total"])
        elif event == "item":
            on_item(p["index"], p["item"])

    try:
        with progress:
            result = run_scan(opts, on_event=on_event, stop=signals.stop)
    except MfclipError as exc:
        fail(exc)
    finally:
        if jsonl is not None:
            jsonl.close()

    if pictures is not None:
        result = pictures.fill(result)
    if pictures is not None and pictures.failure is not None:
        failures.append(WriteFailure(next(t for t in targets if t.is_folder), pictures.failure))
    failures += write_reports(result, targets, html_thumbs=html_thumbs)
    if not quiet:
        render_table(result, out_console)  # prints the summary line too
    interrupted_by = (signals.received[0] if signals.received else True) if result.interrupted else False
    for f in failures:
        err_console.print(f"error: {f.message()}", markup=False, highlight=False, soft_wrap=True)
    if result.interrupted:
        name = signal.Signals(signals.received[0]).name if signals.received else "SIGINT"
        err_console.print(f"[yellow]interrupted ({name}): the reports hold the {len(result.items)} item(s) "
                          f"finished so far (\"interrupted\": true)[/]", highlight=False)
    code = exit_code_for(result.summary(), interrupted_by=interrupted_by, report_failed=bool(failures))
    raise typer.Exit(int(code))
