"""The shipped default model through the real commands: scan (torch vs ONNX) and eval on the shared data."""

from __future__ import annotations

import json

import pytest
from conftest import FACES_DIR, REPO, require_shipped

from mfclip_cli.paths import default_checkpoint
from mfclip_cli.scan import ScanOptions, run_scan

EXAMPLES = REPO / "examples"
ONNX_DIR = default_checkpoint().with_name(default_checkpoint().stem + "_onnx")


@pytest.fixture(autouse=True, scope="module")
def _shipped_weights() -> None:
    require_shipped(default_checkpoint())
    require_shipped(ONNX_DIR / "manifest.json")


def _face_scores(result) -> dict[tuple[str, int | None, int], float]:
    out = {}
    for item in result.items:
        for i, face in enumerate(item.faces):
            out[(item.path, face.frame, i)] = face.score
    return out


def test_scan_with_onnx_equals_scan_with_torch_on_the_same_files():
    ckpt = str(default_checkpoint())
    torch_res = run_scan(ScanOptions(paths=[str(EXAMPLES)], weights=ckpt, backend="torch", workers=1))
    onnx_res = run_scan(ScanOptions(paths=[str(EXAMPLES)], weights=str(ONNX_DIR), backend="onnx", workers=1))
    auto_res = run_scan(ScanOptions(paths=[str(EXAMPLES)], weights=ckpt, backend="auto", workers=1))
    a, b, c = _face_scores(torch_res), _face_scores(onnx_res), _face_scores(auto_res)
    assert a and a.keys() == b.keys() == c.keys()
    assert max(abs(a[k] - b[k]) for k in a) <= 1e-4
    assert onnx_res.model.sha256 == torch_res.model.sha256  # the export records the checkpoint it came from
    assert auto_res.model.path == str(ONNX_DIR)  # auto picks the matching export on CPU


@pytest.mark.slow
@pytest.mark.skipif(not FACES_DIR.is_dir(), reason="../shared/data/faces not present")
def test_eval_on_shared_subset_prints_generator_and_robustness_rows_and_plots(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mfclip_cli.cli import app
    from mfclip_cli.data.layouts import read_dataset
    from mfclip_cli.data.manifest import write_manifest_csv

    monkeypatch.setenv("MFCLIP_CACHE", str(tmp_path / "cache"))
    records = read_dataset(FACES_DIR)
    by_folder: dict[str, list] = {}
    for r in records:
        by_folder.setdefault(r.source, []).append(r)
    subset = [r for recs in by_folder.values() for r in recs[-6:]]
    csv_path = tmp_path / "subset.csv"
    write_manifest_csv(subset, csv_path)
    out_json, plots = tmp_path / "eval.json", tmp_path / "plots"
    res = CliRunner().invoke(app, ["eval", str(default_checkpoint()), "--data", str(csv_path), "--robustness",
                                   "--plots", str(plots), "--json", str(out_json), "--workers", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads(out_json.read_text())
    names = {row["name"] for s in report["sets"] for row in s["rows"]}
    assert {"all", "stylegan2", "stable diffusion 1.4", "generated photos gan"} <= names
    assert "stylegan2" in res.output and "jpeg70" in res.output
    assert len(report["robustness"]) >= 7
    pngs = list(plots.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
