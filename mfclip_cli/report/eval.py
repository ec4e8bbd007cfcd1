"""The files and Rich tables of eval and suite results (`mfclip eval`): ``--plots`` and ``--json`` (the results'
own ``to_json``) are written here, from the result, after the verb returns."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..metrics import BinaryMetrics

if TYPE_CHECKING:
    from rich.console import Console

    from ..evaluate import EvalResult, SuiteResult


# --- files ---------------------------------------------------------------------------------------------------
def write_eval_files(result: EvalResult, *, json_out: str | os.PathLike | None = None,
                     plots: str | os.PathLike | None = None) -> EvalResult:
    """``--plots DIR`` (ROC, DET and histogram PNGs per set), then ``--json PATH`` (atomic) of one eval.

    Returns the result with the figures written (``plots``), the warnings of those that could not be drawn
    and both paths in its settings: what the JSON holds and the tables show.
    """
    from ..evaluate import write_eval_plots
    from ..fsutil import atomic_write_json

    written, warnings = write_eval_plots(result, plots) if plots is not None else ([], [])
    result = replace(result, plots=written, warnings=[*result.warnings, *warnings],
                     settings={**result.settings, "json_out": None if json_out is None else str(json_out),
                               "plots": None if plots is None else str(plots)})
    if json_out is not None:
        atomic_write_json(json_out, result.to_json())
    return result


def write_suite_files(result: SuiteResult, *, json_out: str | os.PathLike | None = None,
                      plots: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """``--plots DIR`` (into ``DIR/<set>/``), then ``--json PATH`` (atomic, with the figures' paths) of a suite;
    returns (figures written, warnings of those that could not be drawn)."""
    from ..evaluate import write_suite_plots
    from ..fsutil import atomic_write_json

    written, warnings = write_suite_plots(result, plots) if plots is not None else ([], [])
    if json_out is not None:
        atomic_write_json(json_out, {**result.to_json(), "plots": written})
    return written, warnings


# --- rendering -----------------------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(m: BinaryMetrics) -> str:
    return "" if m.auc_ci is None else f"{m.auc_ci[0]:.2f}–{m.auc_ci[1]:.2f}"


def _metric_table(title: str, first: str, with_ci: bool):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    # the row name is the only column that may wrap on a narrow terminal; numbers are never cut
    table.add_column(first, overflow="fold", min_width=12)
    cols = ["n\nreal", "n\nfake", "AUC", *(["AUC\n95% CI"] if with_ci else []), "AP", "EER", "ACC", "real\nACC",
            "fake\nACC"]
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True, min_width=4)
    return table


def _metric_cells(m: BinaryMetrics, with_ci: bool) -> list[str]:
    return [str(m.n_real), str(m.n_fake), _f(m.auc), *([_ci(m)] if with_ci else []), _f(m.ap), _f(m.eer),
            _f(m.acc), _f(m.real_acc), _f(m.fake_acc)]


def render_eval(result: EvalResult, console: Console) -> None:
    """Rich tables: one per set (rows by generator / kind / family), robustness, and any warnings."""
    if result.overlap_warning:
        console.print(f"[bold red]WARNING: {result.overlap_warning}[/]", highlight=False)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    thr = result.threshold
    console.print(f"checkpoint {result.checkpoint} (sha256 {result.checkpoint_sha256[:12]}) · threshold "
                  f"{thr.value:.4f} ({thr.method}, {thr.source or 'checkpoint'})",
                  highlight=False)
    for rep in result.sets:
        items = [(r.name if r.group_by == "all" else f"{r.name} [dim]{r.group_by}[/]", r.metrics) for r in rep.rows]
        if rep.video is not None:
            items.append(("all [dim]video level[/]", rep.video))
        with_ci = any(m.auc_ci is not None for _, m in items)
        title = f"{rep.name}  ({rep.n_skipped} file(s) skipped)" if rep.n_skipped else rep.name
        table = _metric_table(title, "row", with_ci)
        for label, m in items:
            table.add_row(label, *_metric_cells(m, with_ci), style="bold" if label == "all" else None)
        console.print(table)
    if result.robustness:
        with_ci = False  # the CIs are in the JSON; here the width goes to ΔAUC
        table = _metric_table("robustness: 'all' rows with the face crop degraded (reals and fakes alike)",
                              "perturbation", with_ci)
        table.add_column("ΔAUC", justify="right", no_wrap=True, min_width=6)
        clean = {rep.name: rep.row("all").metrics.auc for rep in result.sets}
        for r in result.robustness:
            m, base = r.metrics, clean.get(r.set_name)
            delta = "—" if m.auc is None or base is None else f"{m.auc - base:+.3f}"
            label = r.perturbation if len(result.sets) == 1 else f"{r.set_name} · {r.perturbation}"
            table.add_row(label, *_metric_cells(m, with_ci), delta)
        console.print(table)
    if result.overlap:
        console.print(f"[bold red]overlap: {result.overlap} evaluated file(s) were used to train this checkpoint[/]")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if result.calibrated_checkpoint:
        c = result.calibrated_checkpoint
        console.print(f"calibrated checkpoint: {c['path']} (threshold {thr.value:.4f}, {thr.method})",
                      highlight=False)
    if result.plots:
        console.print(f"plots: {len(result.plots)} PNG(s) in {Path(result.plots[0]).parent}", highlight=False)


def render_suite(result: SuiteResult, console: Console, plots: list[str] | None = None) -> None:
    """One Rich table: per set its 'all' row, then a row per generator and per real source (real-ACC);
    why a set was not scored; robustness rows if any; the summary."""
    thr = result.threshold
    where = f"checkpoint {result.checkpoint} (sha256 {result.checkpoint_sha256[:12]})" if result.checkpoint_sha256 \
        else "model"
    console.print(f"{where} · threshold {thr:.4f} · suite {result.suite}", highlight=False)
    with_ci = any(r.metrics.auc_ci is not None for s in result.sets for r in s.rows)
    table = _metric_table(f"suite: {len(result.sets)} set(s)", "set / row", with_ci)
    n_cols = len(table.columns) - 1
    for i, s in enumerate(result.sets):
        if i:
            table.add_section()
        if s.report is None:  # why is said under the table, where a long message has room
            table.add_row(f"[bold]{s.name}[/] [yellow]not scored[/]", str(s.n_real), str(s.n_fake),
                          *["—"] * (n_cols - 2))
            continue
        skipped = f" [dim]({s.report.n_skipped} skipped)[/]" if s.report.n_skipped else ""
        table.add_row(f"[bold]{s.name}[/]{skipped}", *_metric_cells(s.report.row("all").metrics, with_ci),
                      style="bold")
        for r in s.report.rows:
            if r.group_by == "generator":
                table.add_row(f"  {r.name}", *_metric_cells(r.metrics, with_ci))
        for src in s.real_sources:
            cells = [str(src.n), "", *["—"] * (n_cols - 4), _f(src.real_acc), "—"]
            table.add_row(f"  real: {src.source}", *cells)
    console.print(table)
    for s in result.sets:
        if s.error:
            console.print(f"[yellow]{s.name}:[/] {s.error}", highlight=False)
    robust = [r for s in result.sets for r in s.robustness]
    if robust:
        rtable = _metric_table("robustness: 'all' rows with the face crop degraded (reals and fakes alike)",
                               "set · perturbation", False)
        rtable.add_column("ΔAUC", justify="right", no_wrap=True, min_width=6)
        clean = {s.name: s.auc for s in result.sets}
        for r in robust:
            base, m = clean.get(r.set_name), r.metrics
            delta = "—" if m.auc is None or base is None else f"{m.auc - base:+.3f}"
            rtable.add_row(f"{r.set_name} · {r.perturbation}", *_metric_cells(m, False), delta)
        console.print(rtable)
    sm = result.summary
    console.print(
        f"[bold]summary[/] over {sm.n_sets_scored} of {sm.n_sets} set(s): mean AUC {_f(sm.mean_auc)} · "
        f"min AUC {_f(sm.min_auc)}" + (f" ({sm.min_auc_set})" if sm.min_auc_set else "")
        + f" · worst real-ACC {_f(sm.worst_real_acc)}"
        + (f" ({sm.worst_real_set}/{sm.worst_real_source})" if sm.worst_real_source else ""), highlight=False)
    if sm.unscored_sets:
        console.print(f"[yellow]{sm.n_sets_unscored} set(s) not scored:[/] {', '.join(sm.unscored_sets)} "
                      f"(left out of the summary)", highlight=False)
    overlapping = {s.name: s.overlap for s in result.sets if s.overlap}
    if overlapping:
        console.print("[bold red]overlap: files this checkpoint was trained on are in "
                      + ", ".join(f"{k} ({v})" for k, v in overlapping.items()) + ": these metrics are optimistic[/]")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if plots:
        console.print(f"plots: {len(plots)} PNG(s) under {Path(plots[0]).parent.parent}", highlight=False)
