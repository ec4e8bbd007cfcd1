"""`mfclip scan`: the main job end to end (real detector, tiny random model: scores mean nothing).

Most runs go through the CLI in-process (typer's CliRunner: same code path, no interpreter start-up);
the README command and Ctrl-C run as real subprocesses.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from mfclip_cli.report import CSV_COLUMNS, exit_code_for, load_scan_schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def scan_checkpoint(tmp_path_factory) -> Path:
    """A random-init 'tiny' checkpoint with the default RetinaFace crop policy and threshold 0.5."""
    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model import build_model, load_preset, save_checkpoint

    model = build_model(load_preset("tiny"), seed=0)
    path = tmp_path_factory.mktemp("scan_ckpt") / "tiny.safetensors"
    meta = {
        "threshold": {"value": 0.5, "method": "test"},
        "preprocess": {**model.cfg.preprocess.to_dict(), "crop": CropPolicy().to_dict()},
    }
    return save_checkpoint(path, model, meta=meta)


@pytest.fixture(scope="module")
def scan_astronaut() -> np.ndarray:
    """RGB uint8 512x512 photo with one frontal face (public domain, bundled with scikit-image)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(autouse=True)
def _restore_sigterm():
    # `scan` routes SIGTERM to KeyboardInterrupt; in-process runs must not leave that on pytest.
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def validate_report(report: dict) -> None:
    jsonschema.Draft202012Validator(load_scan_schema()).validate(report)


def run_cli(*args: str):
    """``mfclip scan ARGS`` in-process; returns typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from mfclip_cli.cli import app

    result = CliRunner().invoke(app, ["scan", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def scan_json(tmp_path: Path, *args: str, name: str = "report.json") -> tuple[dict, int]:
    """Run a scan with --json FILE; returns (validated report, exit code)."""
    out = tmp_path / name
    result = run_cli(*args, "--json", out, "--quiet")
    assert result.exit_code in (0, 1, 3), result.stderr
    report = json.loads(out.read_text("utf-8"))
    validate_report(report)
    assert result.exit_code == exit_code_for(report["summary"])
    return report, result.exit_code


def by_name(report: dict) -> dict[str, dict]:
    return {os.path.basename(os.path.normpath(i["path"])): i for i in report["items"]}


def write_jpeg(rgb: np.ndarray, path: Path, quality: int = 90) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)
    return path


def write_video(rgb: np.ndarray, path: Path, seconds: float = 3.0, fps: int = 10, size: int = 256) -> Path:
    """An mp4v clip of a 256x256 window drifting slowly over ``rgb`` (the face stays in view)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (size, size))
    assert writer.isOpened()
    small = cv2.resize(rgb, (384, 384), interpolation=cv2.INTER_AREA)
    for i in range(round(seconds * fps)):
        x, y = 40 + i, 10 + i // 2
        writer.write(np.ascontiguousarray(small[y : y + size, x : x + size, ::-1]))
    writer.release()
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming ``width`` x ``height`` and no pixel data (a decompression bomb's face)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ the main command


@pytest.mark.slow
def test_readme_command_on_examples(scan_checkpoint, tmp_path):
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mfclip_cli", "scan", "examples/", "--json", str(report_path),
         "--weights", str(scan_checkpoint)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    for name in ("astronaut.jpg", "astronaut_grey.png", "cat.jpg", "astronaut_pan.mp4", "sd15_generated_man.jpg",
                 "london_real_001_03.jpg"):
        assert name in proc.stdout  # the human table
    assert not proc.stdout.lstrip().startswith("{")  # no JSON mixed into the table output
    report = json.loads(report_path.read_text("utf-8"))
    validate_report(report)
    assert proc.returncode == exit_code_for(report["summary"])
    s = report["summary"]
    assert (s["items"], s["images"], s["videos"], s["no_face"], s["errors"]) == (6, 5, 1, 1, 0)
    assert s["fake"] + s["real"] + s["uncertain"] == 5
    items = by_name(report)
    assert items["astronaut.jpg"]["status"] == items["astronaut_grey.png"]["status"] == "ok"
    assert len(items["astronaut.jpg"]["faces"]) == 1
    assert items["cat.jpg"]["status"] == "no_face" and items["cat.jpg"]["score"] is None
    video = items["astronaut_pan.mp4"]
    assert video["kind"] == "video" and video["status"] == "ok"
    assert video["video"]["frames_read"] > 0 and video["video"]["frames_scored"] > 0


# ---------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_become_error_items_and_exit_3(scan_checkpoint, scan_astronaut, tmp_path, monkeypatch):
    from mfclip_cli import media

    bad = tmp_path / "bad"
    bad.mkdir()
    good_jpeg = write_jpeg(scan_astronaut, bad / "source.jpg").read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "empty.jpg": b"",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 3],
        "random.jpg": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.png": b"this is not a picture\n" * 20,
        "bomb.png": png_header_only(30000, 30000),
        "unreadable.jpg": good_jpeg,
        "corrupt.mp4": b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 256, 8192, dtype=np.uint8).tobytes(),
    }
    for name, data in files.items():
        (bad / name).write_bytes(data)
    (bad / "source.jpg").unlink()
    (bad / "loop_a").symlink_to(bad / "loop_b")
    (bad / "loop_b").symlink_to(bad / "loop_a")
    (bad / "empty_folder").mkdir()
    good = write_jpeg(scan_astronaut, tmp_path / "dossier été" / "visage 顔 ok.jpg")

    # Tests run as root, for whom chmod 000 changes nothing: simulate the kernel's refusal instead.
    real_open = open

    def refusing_open(path, *a, **kw):
        if os.fspath(path).endswith("unreadable.jpg"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(media, "open", refusing_open, raising=False)

    expected = {
        "empty.jpg": {"empty_file"},
        "truncated.jpg": {"truncated"},
        "random.jpg": {"not_an_image"},
        "text.png": {"not_an_image"},
        "bomb.png": {"too_large"},
        "unreadable.jpg": {"unreadable"},
        "corrupt.mp4": {"video_unreadable", "no_frames"},
        "loop_a": {"unreadable"},
        "empty_folder": {"no_media"},
    }
    args = [bad / name for name in expected] + [good]
    report, code = scan_json(tmp_path, *args, "--weights", scan_checkpoint, "--threshold", "1.0")

    items = by_name(report)
    assert set(items) == set(expected) | {good.name}
    for name, codes in expected.items():
        item = items[name]
        assert item["status"] == "error", name
        assert item["error"]["code"] in codes, (name, item["error"])
        assert item["error"]["message"], name
    assert items[good.name]["status"] == "ok" and items[good.name]["path"] == str(good)
    assert report["summary"]["errors"] == len(expected) and report["summary"]["fake"] == 0
    assert code == 3


# ---------------------------------------------------------------------------------- faces and videos


def test_every_face_of_a_group_photo_is_scored(scan_checkpoint, tmp_path):
    insightface = pytest.importorskip("insightface")
    group = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    if not group.is_file():
        pytest.skip(f"insightface's sample image {group} is not installed")
    report, _ = scan_json(tmp_path, group, "--weights", scan_checkpoint)
    [item] = report["items"]
    assert item["status"] == "ok" and len(item["faces"]) == 6
    assert item["score"] == max(f["score"] for f in item["faces"])  # an image's score: its top face
    assert all(len(f["landmarks"]) == 5 and f["frame"] is None for f in item["faces"])


def test_video_frames_are_sampled_and_aggregated(scan_checkpoint, scan_astronaut, tmp_path):
    clip = write_video(scan_astronaut, tmp_path / "clip.mp4", seconds=3.0, fps=10)
    report, _ = scan_json(tmp_path, clip, "--weights", scan_checkpoint, "--fps", "2")
    [item] = report["items"]
    assert item["kind"] == "video" and item["status"] == "ok"
    assert abs(item["video"]["frames_read"] - 6) <= 1  # 3 s at 2 samples/s
    faces = item["faces"]
    assert faces and all(isinstance(f["frame"], int) and f["time_s"] is not None for f in faces)
    assert all(abs(f["time_s"] - f["frame"] / 10) < 0.051 for f in faces)  # 10 fps container

    per_frame: dict[int, float] = {}
    for f in faces:
        per_frame[f["frame"]] = max(per_frame.get(f["frame"], 0.0), f["score"])
    assert item["video"]["frames_scored"] == len(per_frame)
    k = math.ceil(0.25 * len(per_frame))  # documented: mean of the top-k frame scores
    expected = float(np.mean(sorted(per_frame.values(), reverse=True)[:k]))
    assert item["score"] == pytest.approx(expected, abs=2e-6)
    assert f"top {k} of {len(per_frame)}" in item["video"]["aggregation"]


def test_no_face_full_scores_the_whole_image(scan_checkpoint, tmp_path):
    cat = EXAMPLES / "cat.jpg"
    skipped, _ = scan_json(tmp_path, cat, "--weights", scan_checkpoint, name="skip.json")
    full, _ = scan_json(tmp_path, cat, "--weights", scan_checkpoint, "--no-face", "full", name="full.json")
    assert skipped["items"][0]["status"] == "no_face"
    [item] = full["items"]
    assert item["status"] == "ok" and item["score"] is not None
    assert [f["box"] for f in item["faces"]] == [[0.0, 0.0, 451.0, 300.0]]


# -------------------------------------------------------------------------------------- output files


def test_csv_jsonl_and_json_on_stdout(scan_checkpoint, tmp_path):
    csv_path, jsonl_path = tmp_path / "faces.csv", tmp_path / "items.jsonl"
    result = run_cli(EXAMPLES, "--weights", scan_checkpoint, "--json", "-", "--csv", csv_path, "--jsonl", jsonl_path)
    report = json.loads(result.stdout)  # stdout holds the report and nothing else
    validate_report(report)
    assert result.exit_code == exit_code_for(report["summary"])
    assert "cat.jpg" in result.stderr  # the human table moved to stderr

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text("utf-8"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == sum(max(1, len(i["faces"])) for i in report["items"])  # one row per face
    face_rows = [r for r in rows if r["face_index"] != ""]
    assert len(face_rows) == report["summary"]["faces"]
    assert {float(r["face_score"]) for r in face_rows} == {f["score"] for i in report["items"] for f in i["faces"]}

    lines = jsonl_path.read_text("utf-8").splitlines()
    item_schema = {"$defs": load_scan_schema()["$defs"], "$ref": "#/$defs/item"}
    streamed = [json.loads(line) for line in lines]
    for item in streamed:
        jsonschema.Draft202012Validator(item_schema).validate(item)
    assert streamed == report["items"]


def test_shards_cover_every_item_exactly_once(scan_checkpoint, tmp_path):
    missing = tmp_path / "missing.jpg"  # an input error belongs to one shard too
    full = {EXAMPLES / n for n in ("astronaut.jpg", "astronaut_grey.png", "cat.jpg", "astronaut_pan.mp4",
                                   "sd15_generated_man.jpg", "london_real_001_03.jpg")}
    seen: list[str] = []
    for k in (1, 2):
        report, _ = scan_json(tmp_path, EXAMPLES, missing, "--weights", scan_checkpoint, "--fps", "0.5",
                              "--shard", f"{k}/2", name=f"shard{k}.json")  # fmt: skip
        assert report["summary"]["items"] >= 2
        seen += [os.path.normpath(i["path"]) for i in report["items"]]
    assert sorted(seen) == sorted(os.path.normpath(p) for p in full | {missing})


# ---------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--weights", "{tmp}/nope.safetensors"], "does not exist"),
        (["--shard", "3/2"], "--shard"),
        (["--no-face", "crop"], "--no-face"),
        (["--backend", "tensorflow"], "unknown backend"),
    ],
    ids=["missing-weights", "shard-3-of-2", "unknown-no-face", "unknown-backend"],
)
def test_usage_errors_exit_2_with_one_line(scan_checkpoint, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--weights" not in args:
        args += ["--weights", str(scan_checkpoint)]
    result = run_cli(EXAMPLES / "cat.jpg", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_writes_a_valid_partial_report(scan_checkpoint, scan_astronaut, tmp_path):
    source = write_jpeg(scan_astronaut, tmp_path / "source.jpg")
    many = tmp_path / "many"
    many.mkdir()
    n = 200
    for i in range(n):
        os.link(source, many / f"img_{i:03d}.jpg")  # hard links: distinct files to the walker
    report_path, jsonl_path = tmp_path / "report.json", tmp_path / "items.jsonl"
    cmd = [sys.executable, "-m", "mfclip_cli", "scan", str(many), "--weights", str(scan_checkpoint),
           "--workers", "1", "--batch-size", "1", "--json", str(report_path), "--jsonl", str(jsonl_path), "-q"]
    # A shell may start the tests with SIGINT ignored, which children inherit (and Python keeps); with a
    # handler installed here, exec resets the child's SIGINT to the default and Python maps it to Ctrl-C.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(tmp_path / "stderr.txt", "wb") as err:
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        finally:
            signal.signal(signal.SIGINT, before)
        try:
            deadline = time.monotonic() + 300
            while not (jsonl_path.exists() and jsonl_path.read_bytes().count(b"\n") >= 1):
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "no item finished within 300 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr, stderr
    report = json.loads(report_path.read_text("utf-8"))
    validate_report(report)
    assert report["interrupted"] is True
    assert 1 <= report["summary"]["items"] < n
    assert all(i["status"] == "ok" for i in report["items"])
    assert code == exit_code_for(report["summary"])


def test_scores_and_order_do_not_depend_on_workers_or_batch_size(scan_checkpoint, scan_astronaut, tmp_path):
    """Prepare and classify tasks share one pool and batches split at the end of a scan; whatever the
    schedule, every item keeps its input position and its score (faces batched with other files)."""
    import cv2

    from mfclip_cli.scan import ScanOptions, resolved_workers, run_scan, usable_cpus

    folder = tmp_path / "mixed"
    for i in range(9):  # faces at different sizes and flips, two face-less images and a broken file
        img = cv2.resize(scan_astronaut, (256 + 32 * i, 256 + 32 * i))
        write_jpeg(img[:, ::-1] if i % 2 else img, folder / f"{i:02d}_face.jpg")
    write_jpeg(np.full((200, 300, 3), 90, np.uint8), folder / "03b_blank.jpg")
    write_jpeg(np.full((120, 120, 3), 200, np.uint8), folder / "07b_blank.jpg")
    (folder / "05b_broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    expected = sorted(str(p) for p in folder.iterdir())

    runs = {}
    for workers, batch in ((1, 1), (3, 4), (2, 32), (None, 7)):
        res = run_scan([str(folder)], str(scan_checkpoint), ScanOptions(workers=workers, batch_size=batch))
        assert [i.path for i in res.items] == expected
        assert res.settings["workers"] == (workers or usable_cpus())
        runs[(workers, batch)] = [(i.status, i.score) for i in res.items]
    assert resolved_workers(ScanOptions()) == usable_cpus() >= 1
    base = runs[(1, 1)]
    statuses = [s for s, _ in base]
    assert statuses.count("ok") == 9 and statuses.count("no_face") == 2 and statuses.count("error") == 1
    for key, got in runs.items():
        assert [s for s, _ in got] == statuses, key
        for (_, a), (_, b) in zip(base, got):
            assert (a is None and b is None) or abs(a - b) < 1e-5, key


def test_cpu_classify_tasks_are_small_so_every_worker_shares_the_tail(scan_checkpoint, scan_astronaut, tmp_path):
    """On CPU a --batch-size batch runs as tasks of at most CPU_TASK_FACES faces, every face exactly once."""
    import threading

    from mfclip_cli.scan import CPU_TASK_FACES, ScanOptions, run_scan, scan_backend

    folder = tmp_path / "many"
    for i in range(20):
        write_jpeg(scan_astronaut if i % 2 else scan_astronaut[:, ::-1], folder / f"{i:02d}.jpg")
    opts = ScanOptions(workers=2, batch_size=32, device="cpu")
    backend = scan_backend(str(scan_checkpoint), opts)
    assert backend.info.device == "cpu"
    calls: list[tuple[int, int]] = []
    predict = backend.predict

    def logged(image, noise):
        calls.append((len(image), threading.get_ident()))
        return predict(image, noise)

    backend.predict = logged
    res = run_scan([str(folder)], str(scan_checkpoint), opts, backend=backend)
    faces = sum(len(i.faces) for i in res.items)
    assert [i.status for i in res.items] == ["ok"] * 20 and faces >= 20
    assert sum(n for n, _ in calls) == faces
    assert max(n for n, _ in calls) <= CPU_TASK_FACES < 32
    assert len(calls) >= math.ceil(faces / CPU_TASK_FACES)
