"""`mfclip scan`: the main job end to end (real detector, tiny random model: scores mean nothing).

Most runs go through the CLI in-process (typer's CliRunner: same code path, no interpreter start-up);
the README command and Ctrl-C run as real subprocesses.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import signal_after_first_line

from mfclip_cli.report import CSV_COLUMNS, exit_code_for, load_scan_schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def scan_checkpoint(tmp_path_factory) -> Path:
    """A random-init 'tiny' checkpoint with the default RetinaFace crop policy and threshold 0.5."""
    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model import build_model, load_preset, save_checkpoint
    from mfclip_cli.model.metadata import CheckpointMeta, InputSpec, ThresholdRecord

    model = build_model(load_preset("tiny"), seed=0)
    path = tmp_path_factory.mktemp("scan_ckpt") / "tiny.safetensors"
    meta = CheckpointMeta(threshold=ThresholdRecord(0.5, "test"), input=InputSpec(CropPolicy(), model.cfg.preprocess))
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
    walked = bad / "walked"  # found by walking a folder, not named: still reported
    walked.mkdir()
    (walked / "gone.jpg").symlink_to(walked / "deleted.jpg")
    (walked / "loop_c").symlink_to(walked / "loop_d")
    (walked / "loop_d").symlink_to(walked / "loop_c")
    non_utf8 = os.fsdecode(os.fsencode(str(bad)) + b"/trunc\xff.jpg")  # a name that is not UTF-8
    with open(non_utf8, "wb") as fh:
        fh.write(good_jpeg[: len(good_jpeg) // 3])
    good = write_jpeg(scan_astronaut, tmp_path / "dossier été" / "visage 顔 ok.jpg")

    # Tests run as root, for whom chmod 000 changes nothing: simulate the kernel's refusal instead.
    real_open = open

    def refusing_open(path, *a, **kw):
        if os.fspath(path).endswith("unreadable.jpg"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **kw)

    for room in (media.sniff, media.decode):  # discovery sniffs a file's first bytes; decoding reads it all
        monkeypatch.setattr(room, "open", refusing_open, raising=False)

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
    args = [bad / name for name in expected] + [walked, non_utf8, good]
    expected |= {"gone.jpg": {"not_found"}, "loop_c": {"unreadable"}, "loop_d": {"unreadable"},
                 "trunc\\xff.jpg": {"truncated"}}  # fmt: skip
    report, code = scan_json(tmp_path, *args, "--weights", scan_checkpoint, "--threshold", "1.0")

    items = by_name(report)
    assert set(items) == set(expected) | {good.name}
    for name, codes in expected.items():
        item = items[name]
        assert item["status"] == "error", name
        assert item["error"]["code"] in codes, (name, item["error"])
        assert item["error"]["message"], name
    assert items[good.name]["status"] == "ok" and items[good.name]["path"] == str(good)
    assert os.fsdecode(base64.b64decode(items["trunc\\xff.jpg"]["path_b64"])) == non_utf8  # lossless
    assert "symbolic link loop" in items["loop_c"]["error"]["message"]
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
    assert code == exit_code_for(report["summary"], interrupted_by=signal.SIGINT) == 130  # not 0 or 1


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
        res = run_scan(ScanOptions(paths=[str(folder)], weights=str(scan_checkpoint), workers=workers,
                                   batch_size=batch))
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
    opts = ScanOptions(paths=[str(folder)], weights=str(scan_checkpoint), workers=2, batch_size=32, device="cpu")
    backend = scan_backend(opts)
    assert backend.info.device == "cpu"
    calls: list[tuple[int, int]] = []
    predict = backend.predict

    def logged(image, noise):
        calls.append((len(image), threading.get_ident()))
        return predict(image, noise)

    backend.predict = logged
    res = run_scan(opts, backend=backend)
    faces = sum(len(i.faces) for i in res.items)
    assert [i.status for i in res.items] == ["ok"] * 20 and faces >= 20
    assert sum(n for n, _ in calls) == faces
    assert max(n for n, _ in calls) <= CPU_TASK_FACES < 32
    assert len(calls) >= math.ceil(faces / CPU_TASK_FACES)


# ------------------------------------------------------------- issue #15: hostile or unlucky users


def make_checkpoint(tmp_path: Path, name: str, meta_patch=None, raw_meta: str | None = None) -> Path:
    """A copy of a tiny checkpoint whose mfclip metadata is patched (``meta_patch(meta)``) or replaced."""
    from safetensors.torch import load_file, save_file

    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model import build_model, load_preset, save_checkpoint
    from mfclip_cli.model.metadata import CheckpointMeta, InputSpec, ThresholdRecord

    base = tmp_path / "base.safetensors"
    if not base.exists():
        model = build_model(load_preset("tiny"), seed=0)
        meta = CheckpointMeta(threshold=ThresholdRecord(0.5, "test"),
                              input=InputSpec(CropPolicy(), model.cfg.preprocess))
        save_checkpoint(base, model, meta=meta)
    from safetensors import safe_open

    with safe_open(str(base), framework="pt") as fh:
        meta = json.loads(fh.metadata()["mfclip"])
    if meta_patch is not None:
        meta_patch(meta)
    out = tmp_path / name
    save_file(load_file(str(base)), str(out), metadata={"mfclip": raw_meta if raw_meta is not None else json.dumps(meta)})
    return out


def assert_clean_error(result, *needles: str, code: int = 2) -> None:
    """Exit ``code``, no traceback, an ``error:`` line containing every needle."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert "error:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_non_utf8_file_name_keeps_every_report(scan_checkpoint, tmp_path):
    """#15.1: `cp astronaut.jpg d/bad\\xff.jpg; mfclip scan d --json/--csv/--jsonl` writes all three."""
    d = tmp_path / "d"
    d.mkdir()
    name = os.fsdecode(os.fsencode(str(d)) + b"/bad\xff.jpg")
    with open(name, "wb") as fh:
        fh.write((EXAMPLES / "astronaut.jpg").read_bytes())
    out = {k: tmp_path / f"r.{k}" for k in ("json", "csv", "jsonl")}
    result = run_cli(d, "--weights", scan_checkpoint, "--json", out["json"], "--csv", out["csv"],
                     "--jsonl", out["jsonl"])  # not quiet: the table prints the name too
    assert result.exit_code in (0, 1), result.stderr
    report = json.loads(out["json"].read_text("utf-8"))
    validate_report(report)
    [item] = report["items"]
    assert item["status"] == "ok" and item["path"].endswith("bad\\xff.jpg")
    assert os.fsdecode(base64.b64decode(item["path_b64"])) == name  # the exact file, recoverable
    assert [json.loads(x) for x in out["jsonl"].read_text("utf-8").splitlines()] == [item]
    rows = list(csv.DictReader(io.StringIO(out["csv"].read_text("utf-8"))))
    assert rows[0]["path_b64"] == item["path_b64"]
    assert "1 item" in result.stdout  # the table rendered the name (folded) without an encoding error


def test_sigterm_mid_scan_exits_143_with_partial_report(scan_checkpoint, scan_astronaut, tmp_path):
    """#15.2: an interrupted scan never exits 0; SIGTERM gives 143 and "interrupted": true."""
    source = write_jpeg(scan_astronaut, tmp_path / "source.jpg")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(100):
        os.link(source, many / f"img_{i:03d}.jpg")
    report_path, jsonl_path = tmp_path / "report.json", tmp_path / "items.jsonl"
    cmd = [sys.executable, "-m", "mfclip_cli", "scan", str(many), "--weights", str(scan_checkpoint),
           "--workers", "1", "--batch-size", "1", "--threshold", "1.0", "--json", str(report_path),
           "--jsonl", str(jsonl_path), "-q"]  # threshold 1: nothing flagged, the old code exited 0
    code, stderr = signal_after_first_line(cmd, jsonl_path, signal.SIGTERM)
    assert code == 143 and "Traceback" not in stderr and "SIGTERM" in stderr, (code, stderr)
    report = json.loads(report_path.read_text("utf-8"))
    validate_report(report)
    assert report["interrupted"] is True and 1 <= report["summary"]["items"] < 100


def _signal_handler_installed(pid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signum - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see the handler")
def test_signal_during_start_up_exits_cleanly_and_truncates_nothing(scan_checkpoint, tmp_path):
    """#15.2: SIGTERM while the model loads: 143, one message, no traceback, the old --jsonl untouched."""
    old = tmp_path / "old.jsonl"
    old.write_text('{"previous": "scan"}\n')
    cmd = [sys.executable, "-m", "mfclip_cli", "scan", str(EXAMPLES), "--weights", str(scan_checkpoint),
           "--jsonl", str(old), "--json", str(tmp_path / "r.json"), "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _signal_handler_installed(proc.pid, signal.SIGTERM):  # scan's handler is in place
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)  # torch import / model load take seconds: still starting up
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode()
    assert code == 143 and "Traceback" not in stderr and "before the scan started" in stderr, (code, stderr)
    assert old.read_text() == '{"previous": "scan"}\n' and not (tmp_path / "r.json").exists()


def test_report_targets_are_checked_before_scanning(scan_checkpoint, tmp_path, monkeypatch):
    """#15.3: a folder, a path under a file, a read-only folder: exit 2 before any work, naming the path."""
    import errno
    import tempfile

    jsonl = tmp_path / "items.jsonl"
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert_clean_error(run_cli(EXAMPLES / "cat.jpg", "--weights", scan_checkpoint, "--json", folder,
                               "--jsonl", jsonl), "--json", str(folder), "is a folder")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_clean_error(run_cli(EXAMPLES / "cat.jpg", "--weights", scan_checkpoint, "--csv", afile / "r.csv",
                               "--jsonl", jsonl), "--csv", "is a file, not a folder")

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert_clean_error(run_cli(EXAMPLES / "cat.jpg", "--weights", scan_checkpoint, "--json", tmp_path / "r.json",
                               "--jsonl", jsonl), "--json", "Read-only file system")
    assert not jsonl.exists()  # nothing was scanned or written


def test_full_disk_on_jsonl_mid_scan_still_writes_the_json_report(scan_checkpoint, tmp_path, monkeypatch):
    """#15.3 fault injection: the --jsonl target fails after 2 lines (ENOSPC, half a line written); the
    scan goes on, --json gets every item, the stream keeps whole lines only, exit 4 names --jsonl."""
    import errno

    from mfclip_cli import report as R

    real = R.JsonlWriter._write_bytes
    calls = {"n": 0}

    def full_disk(self, data):
        calls["n"] += 1
        if calls["n"] > 2:
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(R.JsonlWriter, "_write_bytes", full_disk)
    report_path, jsonl_path = tmp_path / "r.json", tmp_path / "r.jsonl"
    result = run_cli(EXAMPLES, "--weights", scan_checkpoint, "--json", report_path, "--jsonl", jsonl_path, "-q")
    assert_clean_error(result, "--jsonl", str(jsonl_path), "No space left on device", code=4)
    report = json.loads(report_path.read_text("utf-8"))
    validate_report(report)
    assert report["summary"]["items"] == 6 and report["interrupted"] is False
    lines = jsonl_path.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b""  # two whole lines, the half line rolled back
    assert [json.loads(x) for x in lines[:2]] == report["items"][:2]


def test_a_failing_report_does_not_lose_the_others(scan_checkpoint, tmp_path, monkeypatch):
    """#15.3: the --csv writer fails (e.g. disk full) after the scan: --json is still written, exit 4."""
    import errno

    from mfclip_cli.report import targets

    def no_space(result, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(targets, "write_csv", no_space)
    report_path = tmp_path / "r.json"
    result = run_cli(EXAMPLES / "cat.jpg", "--weights", scan_checkpoint, "--csv", tmp_path / "r.csv",
                     "--json", report_path, "-q")
    assert_clean_error(result, "--csv", "No space left on device", code=4)
    assert json.loads(report_path.read_text("utf-8"))["summary"]["items"] == 1


def test_report_options_never_destroy_inputs(scan_checkpoint, tmp_path):
    """#15.4: a report onto an input (walked or named), two reports on one file: exit 2, inputs intact."""
    d = tmp_path / "d"
    d.mkdir()
    a = d / "a.jpg"
    a.write_bytes((EXAMPLES / "astronaut.jpg").read_bytes())
    original = a.read_bytes()
    cat = tmp_path / "cat.jpg"
    cat.write_bytes((EXAMPLES / "cat.jpg").read_bytes())
    assert_clean_error(run_cli(d, "--weights", scan_checkpoint, "--jsonl", a), "--jsonl", "is one of the scanned inputs")
    assert_clean_error(run_cli(d, cat, "--weights", scan_checkpoint, "--json", cat), "--json", "scanned inputs")
    x = tmp_path / "X"
    assert_clean_error(run_cli(d, "--weights", scan_checkpoint, "--json", x, "--csv", x), "same file")
    assert a.read_bytes() == original and cat.read_bytes() == (EXAMPLES / "cat.jpg").read_bytes()
    assert not x.exists()
    # reports inside the scanned folder are never scanned, not even on the next run (media-like names too)
    for _ in range(2):
        report, _ = scan_json(d, d, "--weights", scan_checkpoint, "--jsonl", d / "items.jsonl",
                              "--csv", d / "faces.jpg", name="report.json")
        assert [os.path.basename(i["path"]) for i in report["items"]] == ["a.jpg"]


def _copy_onnx_export(tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "onnx"
    shutil.copytree(REPO / "weights" / "mfclip_default_onnx", dst)
    return dst


def _patch_manifest(folder: Path, patch) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    patch(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (lambda m, f: m["image_encoder"]["fp32"].update(file="../../../etc/shadow"), "points outside the model folder"),
        (lambda m, f: m["image_encoder"]["fp32"].update(file="/etc/passwd"), "points outside the model folder"),
        (lambda m, f: (os.symlink("/etc/passwd", f / "link.onnx"), m["image_encoder"]["fp32"].update(file="link.onnx")),
         "symbolic link leading outside"),
        (lambda m, f: m["image_encoder"]["fp32"].update(sha256="0" * 64), "modified or replaced after export"),
        (lambda m, f: m.update(threshold=-3), "outside [0, 1]"),
        (lambda m, f: m.update(threshold="0.5"), "not a finite number"),
        (lambda m, f: m.pop("crop"), "no 'crop'"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "sha256-mismatch", "threshold-negative", "threshold-string", "no-crop"],
)
def test_exported_model_folder_cannot_point_outside_itself(tmp_path, patch, needle):
    """#15.5/#15.6: manifest paths stay in their folder, the graph's sha256 is checked, metadata validated."""
    folder = _copy_onnx_export(tmp_path)
    _patch_manifest(folder, lambda m: patch(m, folder))
    result = run_cli(EXAMPLES / "cat.jpg", "--backend", "onnx", "--model", folder)
    assert_clean_error(result, needle, str(folder))
    assert "bytes" not in result.stderr  # nothing about a file outside the folder is disclosed


@pytest.mark.parametrize(
    ("patch", "raw", "needle"),
    [
        (lambda m: m.update(threshold={"value": 7.5}), None, "outside [0, 1]"),
        (lambda m: m.update(threshold=-3), None, "outside [0, 1]"),
        (lambda m: m.pop("threshold"), None, "no decision threshold"),
        (lambda m: m["preprocess"].pop("crop"), None, "no face-crop policy"),
        (lambda m: m.update(threshold={"value": "0.5"}), None, "not a finite number"),
        (lambda m: m.pop("model"), None, "'model'"),
        (None, "not json {", "not valid JSON"),
        (None, "[1, 2]", "not an object"),
    ],
    ids=["threshold-7.5", "threshold-negative", "no-threshold", "no-crop", "string-threshold", "no-model",
         "not-json", "a-list"],
)
def test_checkpoint_metadata_is_validated(tmp_path, patch, raw, needle):
    """#15.6: one validator for torch, ONNX, eval and export: bad metadata is exit 2 with a message."""
    from mfclip_cli.errors import CheckpointError
    from mfclip_cli.export import ExportOptions, run_export

    if raw is not None and "format_version" not in raw:
        ckpt = make_checkpoint(tmp_path, "bad.safetensors", raw_meta=raw)
    else:
        ckpt = make_checkpoint(tmp_path, "bad.safetensors", meta_patch=patch)
    assert_clean_error(run_cli(EXAMPLES / "cat.jpg", "--weights", ckpt), needle, str(ckpt))
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        run_export(ExportOptions(str(ckpt), str(tmp_path / "export")))
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--uncertain-band", "-1"], "--uncertain-band"),
        (["--max-faces", "0"], "--max-faces"),
        (["--fps", "0"], "--fps"),
        (["--frames", "0"], "--frames"),
        (["--threshold", "nan"], "--threshold"),
        (["--backend", "torch", "--model", "{tmp}"], "--model DIR"),
        (["--model", "{tmp}"], "--backend onnx"),
    ],
    ids=["band-negative", "max-faces-0", "fps-0", "frames-0", "threshold-nan", "model-with-torch", "model-with-auto"],
)
def test_bad_option_values_exit_2_with_one_line(scan_checkpoint, tmp_path, args, needle):
    """#15.7: options that scored nothing, broke every video or were silently ignored are usage errors."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(EXAMPLES / "cat.jpg", "--weights", scan_checkpoint, *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


def test_video_corrupt_in_the_middle_is_ok_with_a_warning_and_quiet_decoder(scan_checkpoint, scan_astronaut, tmp_path):
    """#15.8: a stream that breaks off is scored on the frames before the break, and says so; under -q the
    decoder's own complaints do not reach stderr."""
    clip = write_video(scan_astronaut, tmp_path / "clip.mp4", seconds=4.0, fps=10)
    data = clip.read_bytes()
    n = len(data)
    (tmp_path / "broken.mp4").write_bytes(data[: n // 2] + bytes(n // 4) + data[n // 2 + n // 4:])
    report_path = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "mfclip_cli", "scan", str(tmp_path / "broken.mp4"), "--weights",
           str(scan_checkpoint), "--fps", "10", "--json", str(report_path), "-q"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode in (0, 1, 3), proc.stderr
    report = json.loads(report_path.read_text("utf-8"))
    validate_report(report)
    [item] = report["items"]
    assert item["status"] in ("ok", "no_face"), item
    assert item["video"]["frames_read"] < 40
    assert any("decoding stopped at frame" in w for w in item["video"]["warnings"])
    assert proc.stderr == "", proc.stderr  # no "[mpeg4 @ 0x…]" lines


def test_quiet_prints_per_file_errors_and_from_file_skips_comments(scan_checkpoint, tmp_path):
    """#15.8: -q shows errors ("only errors", as its help says); --from-file skips # lines and padding."""
    listing = tmp_path / "list.txt"
    missing = tmp_path / "missing.jpg"
    listing.write_text(f"# my scan list\n\n   {EXAMPLES / 'cat.jpg'}  \n\t{missing}\n", encoding="utf-8")
    report, code = scan_json(tmp_path, "--from-file", listing, "--weights", scan_checkpoint)
    assert [os.path.basename(i["path"]) for i in report["items"]] == ["missing.jpg", "cat.jpg"]
    assert code == 3
    result = run_cli("--from-file", listing, "--weights", scan_checkpoint, "-q")
    assert result.exit_code == 3 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error:") and str(missing) in line and "not_found" in line
