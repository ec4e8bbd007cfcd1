"""Scan report: schema conformance, writers, exit codes, verdicts, rendering, and the plot files."""

from __future__ import annotations

import copy
import csv
import json
from datetime import UTC, datetime, timedelta

import jsonschema
import numpy as np
import pytest
from rich.console import Console

from mfclip_cli import plots
from mfclip_cli import report as R

T0 = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
LANDMARKS = [(40.0, 50.0), (60.0, 50.0), (50.0, 60.0), (42.0, 70.0), (58.0, 70.0)]


def face(score: float, frame: int | None = None, time_s: float | None = None) -> R.FaceResult:
    return R.FaceResult(box=(10.123456, 20, 90, 110.5), landmarks=LANDMARKS, det_score=0.99,
                        score=score, frame=frame, time_s=time_s)  # fmt: skip


def make_result(items=None, **kw) -> R.ScanResult:
    if items is None:
        items = [
            R.ItemResult("a/fake.png", "image", "ok", score=0.9123456789, verdict="fake",
                         faces=[face(0.9123456789), face(0.2)]),
            R.ItemResult("a/real.jpg", "image", "ok", score=0.1, verdict="real", faces=[face(0.1)]),
            R.ItemResult("a/landscape.png", "image", "no_face"),
            R.ItemResult.failed("a/broken.jpg", "image", "decode_failed", "not an image file"),
            R.ItemResult("v/clip.mp4", "video", "ok", score=0.55, verdict="uncertain",
                         faces=[face(0.5, frame=0, time_s=0.0), face(0.6, frame=15, time_s=0.5)],
                         video={"frames_read": 30, "frames_scored": 2, "aggregation": "mean"}),
        ]  # fmt: skip
    return R.ScanResult(
        model=kw.pop("model", R.ModelInfo("weights/mfclip_default.safetensors", "ab" * 32, 0.5)),
        settings={"frames": 8, "uncertain_band": 0.05},
        started_at=T0,
        finished_at=T0 + timedelta(seconds=3.25),
        items=items,
        **kw,
    )


@pytest.fixture(scope="module")
def schema():
    s = R.load_scan_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def validate(doc, schema):
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_report_with_every_kind_of_item_validates_against_the_schema(schema):
    doc = make_result().to_json()
    validate(doc, schema)
    assert doc["schema"] == R.SCHEMA_ID == "mfclip.scan/1"
    assert doc["tool"]["name"] == "mfclip"
    assert doc["started_at"] == "2025-01-02T03:04:05.678Z"
    assert doc["summary"] == {"items": 5, "images": 4, "videos": 1, "faces": 5, "fake": 1, "real": 1,
                              "uncertain": 1, "no_face": 1, "errors": 1,
                              "provenance": dict.fromkeys(R.PROVENANCE_COUNTS, 0)}  # fmt: skip
    assert doc["items"][0]["score"] == 0.912346
    assert doc["items"][0]["faces"][0]["box"][0] == 10.12
    assert doc["items"][3]["error"] == {"code": "decode_failed", "message": "not an image file"}


def test_empty_and_interrupted_scan_validates(schema):
    doc = make_result(items=[], interrupted=True).to_json()
    validate(doc, schema)  # raises on a schema violation
    assert doc["interrupted"] is True
    assert doc["items"] == [] and doc["summary"]["items"] == 0


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["items"][0].__setitem__("score", 1.5),
        lambda d: d["items"][0]["faces"][0].__setitem__("score", -0.1),
        lambda d: d.pop("summary"),
        lambda d: d["items"][1].pop("verdict"),
        lambda d: d["items"][1].__setitem__("verdict", "maybe"),
        lambda d: d["items"][2].__setitem__("score", 0.3),  # a no_face item has no score
        lambda d: d["items"][3].__setitem__("error", None),  # an error item needs its error
        lambda d: d["items"][4].__setitem__("video", None),  # a read video needs video info
        lambda d: d.__setitem__("schema", "mfclip.scan/2"),
        lambda d: d.__setitem__("started_at", "2025-01-02 03:04:05"),
        lambda d: d["model"].__setitem__("sha256", "xyz"),
        lambda d: d["summary"].__setitem__("extra", 1),
    ],
)
def test_broken_reports_fail_validation(schema, breakage):
    doc = copy.deepcopy(make_result().to_json())
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, schema)


def test_item_constructor_enforces_the_schema_rules():
    with pytest.raises(ValueError, match="probability"):
        R.ItemResult("x.png", "image", "ok", score=1.5, verdict="fake", faces=[face(0.9)])
    with pytest.raises(ValueError, match="status 'ok' needs"):
        R.ItemResult("x.png", "image", "ok", score=0.5, verdict="fake")
    with pytest.raises(ValueError, match="kind must be one of"):
        R.ItemResult("x.gif", "gif", "no_face")
    with pytest.raises(ValueError, match="needs error"):
        R.ItemResult("x.png", "image", "error")
    with pytest.raises(ValueError, match="timezone-aware"):
        R.format_utc(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    "counts, code",
    [
        ({}, R.ExitCode.OK),
        ({"real": 3}, R.ExitCode.OK),
        ({"fake": 1, "errors": 2}, R.ExitCode.FLAGGED),
        ({"errors": 1, "real": 2}, R.ExitCode.READ_ERRORS),
        ({"uncertain": 4, "no_face": 1}, R.ExitCode.OK),
    ],
)
def test_exit_code_for_summary(counts, code):
    summary = {k: 0 for k in ("items", "images", "videos", "faces", "fake", "real", "uncertain",
                              "no_face", "errors")} | counts  # fmt: skip
    assert R.exit_code_for(summary) is code


def test_exit_codes_are_the_documented_numbers():
    assert [int(c) for c in R.ExitCode] == [0, 1, 2, 3, 4, 130, 143]
    assert R.exit_code_for(make_result().summary()) == 1


def test_interrupt_and_report_failure_outrank_the_verdicts():
    flagged = make_result().summary()
    assert R.exit_code_for(flagged, report_failed=True) == R.ExitCode.REPORT_FAILED == 4
    assert R.exit_code_for(flagged, interrupted_by=True, report_failed=True) == 130  # Ctrl-C
    assert R.exit_code_for({}, interrupted_by=2) == 130 and R.exit_code_for({}, interrupted_by=15) == 143


def test_non_utf8_file_name_is_kept_exactly_in_every_report(tmp_path, schema):
    import base64
    import os

    raw = b"d/bad\xff name.jpg"
    path = os.fsdecode(raw)  # how Python hands such a name over: a lone surrogate
    item = R.ItemResult(path, "image", "error", error={"code": "truncated", "message": f"{path}: truncated"})
    doc = make_result(items=[item]).to_json()
    json.dumps(doc).encode("utf-8")  # strictly encodable now
    validate(doc, schema)
    [j] = doc["items"]
    assert j["path"] == "d/bad\\xff name.jpg" and base64.b64decode(j["path_b64"]) == raw
    assert j["error"]["message"].startswith("d/bad\\xff name.jpg")
    assert "path_b64" not in make_result().to_json()["items"][0]  # valid UTF-8 names keep the old shape
    R.write_csv(make_result(items=[item]), tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as fh:
        [row] = list(csv.DictReader(fh))
    assert base64.b64decode(row["path_b64"]) == raw
    with R.JsonlWriter(tmp_path / "r.jsonl") as w:
        w.write(item)
    assert json.loads((tmp_path / "r.jsonl").read_text("utf-8")) == j


def test_jsonl_failure_mid_line_leaves_only_whole_lines(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "s.jsonl"
    items = make_result().items
    calls = {"n": 0}
    real = R.JsonlWriter._write_bytes

    def full_disk_after_two(self, data):
        calls["n"] += 1
        if calls["n"] > 2:
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(R.JsonlWriter, "_write_bytes", full_disk_after_two)
    with R.JsonlWriter(out) as w:
        w.write(items[0])
        w.write(items[1])
        with pytest.raises(OSError, match="No space"):
            w.write(items[2])
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3  # two whole lines, no half line
    assert [json.loads(x)["path"] for x in lines[:2]] == [items[0].path, items[1].path]


def test_jsonl_file_is_not_touched_until_the_stream_opens(tmp_path):
    out = tmp_path / "old.jsonl"
    out.write_text("old line\n")
    with R.JsonlWriter(out):
        pass  # start-up failed: nothing written
    assert out.read_text() == "old line\n"


def test_video_warnings_are_reported_only_when_present(schema):
    video = {"frames_read": 3, "frames_scored": 0, "aggregation": "no frame had a face",
             "warnings": ["decoding stopped at frame 3 of the 40 the container declares"]}
    item = R.ItemResult("v.mp4", "video", "no_face", video=video)
    doc = make_result(items=[item]).to_json()
    validate(doc, schema)
    assert doc["items"][0]["video"]["warnings"] == video["warnings"]
    quiet = R.ItemResult("v.mp4", "video", "no_face", video={**video, "warnings": []})
    assert "warnings" not in quiet.to_json()["video"]


def test_csv_has_one_row_per_face_and_one_per_faceless_item(tmp_path):
    out = tmp_path / "report.csv"
    R.write_csv(make_result(), out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(R.CSV_COLUMNS)
    assert len(rows) == 2 + 1 + 1 + 1 + 2  # faces per item, one row for no_face and error items
    first = rows[0]
    assert (first["path"], first["face_index"], first["face_score"], first["score"]) == (
        "a/fake.png", "0", "0.912346", "0.912346")  # fmt: skip
    no_face = next(r for r in rows if r["status"] == "no_face")
    assert no_face["face_index"] == "" and no_face["x1"] == "" and no_face["score"] == ""
    assert next(r for r in rows if r["status"] == "error")["error_code"] == "decode_failed"
    video_rows = [r for r in rows if r["kind"] == "video"]
    assert [r["frame"] for r in video_rows] == ["0", "15"]


def test_jsonl_writes_one_parseable_line_per_item_as_it_goes(tmp_path, schema):
    out = tmp_path / "stream.jsonl"
    result = make_result()
    item_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/item"}
    with R.JsonlWriter(out) as w:
        for k, item in enumerate(result.items):
            w.write(item)
            assert len(out.read_text().splitlines()) == k + 1  # visible before the writer closes
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["path"] for d in lines] == [i.path for i in result.items]
    for d in lines:
        validate(d, item_schema)
    with R.JsonlWriter(out) as w:  # a new scan starts a new stream
        w.write(result.items[0])
    assert len(out.read_text().splitlines()) == 1


def test_json_write_is_atomic_and_replaces_existing_file_whole(tmp_path, schema):
    out = tmp_path / "report.json"
    out.write_text("x" * 100_000)  # an older, longer file
    R.write_json(make_result(items=[]), out)
    doc = json.loads(out.read_text())
    validate(doc, schema)
    assert doc["summary"]["items"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    R.write_csv(make_result(), tmp_path / "report.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.json"]


def test_render_table_caps_rows_and_prints_summary():
    items = [R.ItemResult(f"img_[{k}].png", "image", "ok", score=0.1, verdict="real", faces=[face(0.1)])
             for k in range(60)]  # fmt: skip
    console = Console(record=True, width=120, force_terminal=False)
    R.render_table(make_result(items=items), console, max_rows=50)
    text = console.export_text()
    assert "img_[0].png" in text and "img_[49].png" in text and "img_[50].png" not in text
    assert "… 10 more items" in text
    assert "60 items (60 images, 0 videos)" in text and "0 fake" in text


def test_render_summary_marks_interrupted_scans():
    console = Console(record=True, width=200)
    R.render_summary(make_result(interrupted=True), console)
    assert "INTERRUPTED" in console.export_text()


# --- plots ---------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(seed: int, n: int = 100):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1), y


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_plots_write_png_files(tmp_path):
    curves = {"all": _scores(0), "ddpm": _scores(1), "only_reals": (np.array([0.1, 0.2]), np.array([0, 0]))}
    plots.plot_roc(curves, tmp_path / "roc.png")
    plots.plot_det(curves, tmp_path / "det.png")
    plots.plot_score_histograms(*_scores(2), 0.5, tmp_path / "hist.png")
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_auc": 0.7 + 0.05 * e}
            for e in range(5)] + [{"epoch": 5, "train_loss": 0.1, "val_loss": None, "val_auc": None}]  # fmt: skip
    plots.plot_training_curves(rows, tmp_path / "curves.png")
    for name in ("roc.png", "det.png", "hist.png", "curves.png"):
        _assert_png(tmp_path / name)


def test_plot_roc_refuses_when_no_curve_has_both_classes(tmp_path):
    with pytest.raises(ValueError, match="only real or only fake"):
        plots.plot_roc({"x": ([0.1], [1])}, tmp_path / "roc.png")
