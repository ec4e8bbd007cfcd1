"""`mfclip scan --html` and `--explain`: the page matches the JSON of the same run, is self-contained, renders
in a real browser, and explanations put their heat on the face, for the torch and the ONNX backend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import signal_after_first_line

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ONNX_MODEL = REPO / "weights" / "mfclip_default_onnx"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def _restore_signals():
    # `scan` installs SIGINT/SIGTERM handlers while it runs; in-process runs must not leave them on pytest.
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


def run_cli(*args: str):
    """``mfclip scan ARGS`` in-process; returns typer's Result."""
    from typer.testing import CliRunner

    from mfclip_cli.cli import app

    result = CliRunner().invoke(app, ["scan", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


class PageParser(HTMLParser):
    """Collects item rows (with their faces), every src/href, and script/link tags of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        for key in ("src", "href"):
            if key in a:
                self.urls.append((tag, key, a[key]))
        if tag == "tr" and "item" in a.get("class", "").split():
            self.rows.append({**a, "face_scores": [], "imgs": 0})
        elif tag == "li" and "face" in a.get("class", "").split():
            self.rows[-1]["face_scores"].append(float(a["data-score"]))
        elif tag == "img" and self.rows:
            self.rows[-1]["imgs"] += 1


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def examples_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One scan of examples/ plus a corrupt file with the shipped model: (html, json path, report)."""
    out = tmp_path_factory.mktemp("html_examples")
    bad = out / "inputs" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    html_path, json_path = out / "report.html", out / "report.json"
    res = run_cli(EXAMPLES, bad, "--json", json_path, "--html", html_path, "-q")
    assert res.exit_code in (1, 3), res.output
    return html_path, json_path, json.loads(json_path.read_text())


# --------------------------------------------------------------------------------------------- the page


def test_page_has_one_row_per_item_with_the_json_faces_and_scores(examples_run):
    html_path, _, report = examples_run
    page = parse_page(html_path)
    items = {it["path"]: it for it in report["items"]}
    assert len(page.rows) == len(report["items"]) == report["summary"]["items"]
    assert {r["data-path"] for r in page.rows} == set(items)
    assert any(it["status"] == "error" for it in items.values())
    for row in page.rows:
        item = items[row["data-path"]]
        assert int(row["data-faces"]) == len(item["faces"]) == len(row["face_scores"])
        assert row["face_scores"] == [f["score"] for f in item["faces"]]
        assert (float(row["data-score"]) if row["data-score"] else None) == item["score"]
        assert row["data-verdict"] == (item["verdict"] or ("error" if item["status"] == "error" else "no_face"))
    text = html_path.read_text(encoding="utf-8")
    for key in ("items", "faces", "fake", "real", "uncertain", "errors"):
        assert f"<b>{report['summary'][key]}</b>" in text
    assert report["model"]["sha256"] in text


def test_page_is_self_contained(examples_run):
    html_path, _, _ = examples_run
    page = parse_page(html_path)
    assert page.urls, "the page should embed pictures"
    for tag, key, value in page.urls:
        assert value.startswith(("data:image/", "#")), (tag, key, value[:80])
    assert not [a for t, a in page.tags if t == "script" and "src" in a]
    assert not [a for t, a in page.tags if t == "link"]
    assert "@import" not in html_path.read_text(encoding="utf-8")


def test_flagged_items_come_first_and_pictures_are_capped(examples_run, tmp_path):
    from mfclip_cli.report.html import GROUP_RANK, page_order

    _, _json_path, report = examples_run
    order = page_order(report["items"])
    groups = [report["items"][i]["verdict"] or report["items"][i]["status"] for i in order]
    assert [GROUP_RANK.get(g, 2) for g in groups] == sorted(GROUP_RANK.get(g, 2) for g in groups)
    capped = tmp_path / "capped.html"
    res = run_cli(EXAMPLES / "astronaut.jpg", EXAMPLES / "cat.jpg", EXAMPLES / "london_real_001_03.jpg",
                  "--html", capped, "--html-thumbs", "1", "-q")
    assert res.exit_code in (0, 1), res.output
    rows = parse_page(capped).rows
    assert len(rows) == 3
    assert [r["imgs"] > 0 for r in rows] == [True, False, False]
    assert "Pictures for the first 1 of 3 items" in capped.read_text(encoding="utf-8")


def test_paths_are_escaped(tmp_path):
    from mfclip_cli.report import ItemResult, ModelInfo, ScanResult, utc_now
    from mfclip_cli.report.html import render_html

    evil = str(tmp_path / '"><script>alert(1)</script>.jpg')
    result = ScanResult(model=ModelInfo("m", "0" * 64, 0.5), settings={}, started_at=utc_now(),
                        finished_at=utc_now(), items=[ItemResult.failed(evil, "image", "not_found", evil)])
    page = render_html(result)
    assert "<script>alert(1)" not in page
    assert page.count("<script>") == 1


def test_interrupted_scan_writes_a_marked_page(tmp_path):
    from mfclip_cli.report import ItemResult, ModelInfo, ReportTarget, ScanResult, utc_now, write_reports

    result = ScanResult(model=ModelInfo("m", "0" * 64, 0.5), settings={}, started_at=utc_now(),
                        finished_at=utc_now(), items=[ItemResult(str(EXAMPLES / "cat.jpg"), "image", "no_face")],
                        interrupted=True)
    target = tmp_path / "partial.html"
    assert write_reports(result, [ReportTarget("--html", str(target))]) == []
    assert "Interrupted: this report holds only the items finished" in target.read_text(encoding="utf-8")


@pytest.mark.parametrize("args, needle", [
    (["--explain"], "--explain needs --explain-dir"),
    (["--explain-dir", "{tmp}/x"], "add --explain"),
    (["--html-thumbs", "-1", "--html", "{tmp}/r.html"], "--html-thumbs must be >= 0"),
    (["--explain", "--explain-dir", "{inputs}"], "holds a scanned input"),
])
def test_html_and_explain_usage_errors_exit_2(tmp_path, args, needle):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(EXAMPLES / "cat.jpg", inputs / "cat.jpg")
    res = run_cli(inputs, *[a.format(tmp=tmp_path, inputs=inputs) for a in args])
    assert res.exit_code == 2
    assert needle in res.output


# ------------------------------------------------------------------------------------ a real browser


def _chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
    return path


def chromium_args(chromium: str, *extra: str) -> list[str]:
    """The headless command the test and docs/make_scan_report_png.sh both use."""
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *extra]


@pytest.mark.slow
def test_page_renders_in_headless_chromium(examples_run, tmp_path):
    import cv2

    chromium = _chromium()
    html_path, _, report = examples_run
    shot = tmp_path / "page.png"
    subprocess.run(chromium_args(chromium, f"--screenshot={shot}", "--window-size=1280,1600",
                                 html_path.as_uri()), check=True, capture_output=True, timeout=120)
    pixels = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3) // 16, axis=0)) > 200  # pictures, not flat colour
    dom = subprocess.run(chromium_args(chromium, "--dump-dom", html_path.as_uri()), check=True,
                         capture_output=True, text=True, timeout=120).stdout
    n = report["summary"]["items"]
    parser = PageParser()
    parser.feed(dom)
    assert len(parser.rows) == n
    body = next(a for t, a in parser.tags if t == "body")
    assert body.get("data-ready") == str(n)  # the inline script ran to the end
    assert f"{n} of {n} items shown" in dom


# -------------------------------------------------------------------------------------- explanations


def heat_mass_in_box(face: dict, image_shape: tuple[int, int], uniform: bool = False) -> float:
    """Share of a face's heat (read from its heatmap PNG, mapped into the image) inside its box;
    ``uniform``: the share an evenly spread heat over the whole crop would have (the baseline)."""
    import cv2

    e = face["explanation"]
    raw = cv2.imread(e["heatmap_png"], cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (e["crop_size"], e["crop_size"])
    heat = np.ones(raw.shape) if uniform else raw.astype(np.float64)
    h, w = image_shape
    in_image = cv2.warpAffine(heat, np.asarray(e["crop_to_image"]), (w, h), flags=cv2.INTER_LINEAR)
    x1, y1, x2, y2 = (round(v) for v in face["box"])
    return float(in_image[max(y1, 0):y2, max(x1, 0):x2].sum() / in_image.sum())


@pytest.mark.slow
@pytest.mark.parametrize("backend, method", [("torch", "grad-cam"), ("onnx", "occlusion")])
def test_explain_puts_the_heat_on_the_face(tmp_path, backend, method):
    import cv2

    model = ["--model", ONNX_MODEL] if backend == "onnx" else []
    out = tmp_path / "expl"
    res = run_cli(EXAMPLES / "astronaut.jpg", "--backend", backend, *model, "--explain", "--explain-dir", out,
                  "--json", tmp_path / "r.json", "--html", tmp_path / "r.html", "-q")
    assert res.exit_code in (0, 1), res.output
    report = json.loads((tmp_path / "r.json").read_text())
    import jsonschema

    from mfclip_cli.report import load_scan_schema

    jsonschema.Draft202012Validator(load_scan_schema()).validate(report)
    (face,) = report["items"][0]["faces"]
    e = face["explanation"]
    assert (e["method"], e["backend"]) == (method, backend)
    assert e["target"] == ("fake" if face["score"] >= report["model"]["threshold"] else "real")
    image = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    share, even = heat_mass_in_box(face, image.shape[:2]), heat_mass_in_box(face, image.shape[:2], uniform=True)
    assert share > 0.5 and share > even + 0.1, (share, even)  # most heat on the face, and more than chance puts there
    overlay = cv2.imread(e["overlay_png"])
    assert overlay.shape == (e["crop_size"], e["crop_size"], 3)
    x1, y1, x2, _y2 = e["patch_box"]
    assert (overlay[y1 + 1, x1 + 5:x2 - 5] > 200).all()  # the patch outline is drawn where patch_box says
    assert len(parse_page(tmp_path / "r.html").rows) == 1


def test_explainer_scores_the_same_input_as_the_backend(tmp_path):
    """Grad-CAM's forward pass is the scan's: same P(fake); heat is a distribution inside the mask."""
    from mfclip_cli.explain import GradCamExplainer
    from mfclip_cli.model import build_model, load_preset
    from mfclip_cli.model.preprocess import prepare_batch_with_patches

    model = build_model(load_preset("tiny"), seed=0).eval()
    crop = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    image, noise, _ = prepare_batch_with_patches([crop], model.cfg.preprocess)
    import torch

    with torch.inference_mode():
        p = float(model.predict_proba(torch.from_numpy(image), torch.from_numpy(noise))[0])
    e = GradCamExplainer(model, model.cfg.preprocess).explain(image[0], noise[0], "fake")
    assert e.score == pytest.approx(p, abs=1e-6)
    assert e.heat.shape == (224, 224) and e.heat.min() >= 0 and e.heat.sum() == pytest.approx(1.0, abs=1e-4)
    assert "resblocks" in e.detail  # the tiny preset is a ViT: tokens laid out as a map


def test_patch_index_is_the_patch_the_noise_input_was_cut_from():
    from mfclip_cli.model.preprocess import PreprocessConfig, patch_box, prepare_batch_with_patches

    rng = np.random.default_rng(1)
    crops = []
    for quadrant in range(4):  # one noisy quadrant per crop, the rest flat: it is the richest patch
        crop = np.full((224, 224, 3), 128, np.uint8)
        x1, y1, x2, y2 = patch_box(quadrant, 224, 2)
        crop[y1:y2, x1:x2] = rng.integers(0, 256, (y2 - y1, x2 - x1, 3), dtype=np.uint8)
        crops.append(crop)
    _image, noise, patches = prepare_batch_with_patches(crops, PreprocessConfig())
    assert patches.tolist() == [0, 1, 2, 3]
    for k, crop in enumerate(crops):
        x1, y1, x2, y2 = patch_box(int(patches[k]), 224, 2)
        assert np.allclose(noise[k], crop[y1:y2, x1:x2].transpose(2, 0, 1) / 255.0)


@pytest.mark.slow
def test_sigterm_mid_scan_writes_the_page_marked_interrupted(tmp_path):
    import sys

    many = tmp_path / "many"
    many.mkdir()
    for i in range(60):
        os.link(EXAMPLES / "astronaut.jpg", many / f"img_{i:03d}.jpg")
    page, jsonl = tmp_path / "partial.html", tmp_path / "items.jsonl"
    cmd = [sys.executable, "-m", "mfclip_cli", "scan", str(many), "--workers", "1", "--batch-size", "1",
           "--html", str(page), "--jsonl", str(jsonl), "-q"]
    code, stderr = signal_after_first_line(cmd, jsonl, signal.SIGTERM)
    assert code == 143, stderr
    rows = parse_page(page).rows
    assert 1 <= len(rows) < 60
    assert len(rows) == jsonl.read_bytes().count(b"\n")
    assert "Interrupted: this report holds only the items finished" in page.read_text(encoding="utf-8")
