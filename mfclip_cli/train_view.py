"""Rich progress and the per-epoch table for `mfclip train` (quiet for scripts)."""

from __future__ import annotations

from typing import Any, Self

from rich.console import Console

from .report.progress import progress_bar


class TrainView:
    """Turns train.py callback events into progress bars and one printed line per epoch."""

    def __init__(self, quiet: bool, console: Console, err_console: Console):
        self.quiet = quiet
        self.console = console
        self.progress = progress_bar(err_console, enabled=not quiet and err_console.is_terminal, elapsed=True)
        self.task = None

    def __enter__(self) -> Self:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _task(self, description: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def callback(self, event: str, p: dict[str, Any]) -> None:
        if event == "run_start":
            self._say(f"[bold]run {p['run']}/{p['of']}[/] {p['name']} -> {p['dir']}")
        elif event == "crops_start":
            self._task("face crops", p["total"])
        elif event in ("crop_done", "step"):
            if self.task is not None:
                self.progress.advance(self.task)
        elif event == "data":
            tests = ", ".join(f"{k}: {v}" for k, v in p["tests"].items())
            self._say(f"train {p['train']} · val {p['val']} · tests {tests} · skipped {p['skipped']}")
        elif event == "epoch_start":
            self._task(f"epoch {p['epoch'] + 1}", p["batches"])
        elif event == "stage":
            self._say(f"training the {p['what']} on {p['reals']} real crops (pseudo-fakes)")
        elif event == "resumed":
            self._say(f"resumed at epoch {p['epoch'] + 1}")
        elif event == "epoch_end":
            auc = "n/a" if p["val_auc"] is None else f"{p['val_auc']:.4f}"
            star = " *" if p["improved"] else ""
            self._say(f"epoch {p['epoch'] + 1:3d}  loss {p['train_loss']:.4f} (con {p['contrastive_loss']:.3f} "
                      f"kl {p['kl_loss']:.3f} ce {p['ce_loss']:.3f})  val loss {p['val_loss']:.4f}  "
                      f"val AUC {auc}  ACC {p['val_acc']:.3f}  {p['images_per_s']:.1f} img/s{star}")
        elif event == "early_stop":
            self._say(f"early stop after epoch {p['epoch'] + 1}")
        elif event == "tests":
            for name, rep in p.items():
                for row in rep["rows"]:
                    auc = row.get("auc")
                    self._say(f"test {name:40s} {row['name']:32s} AUC {'n/a' if auc is None else f'{auc:.4f}'} "
                              f"ACC {row.get('acc', 0):.3f}")

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)
