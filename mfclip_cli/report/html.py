"""The scan report as one self-contained HTML page (``mfclip scan --html``): pictures embedded as data: URIs,
no network, no external script, style or font, so the file opens offline in any browser.

The page lists the same items, faces and scores as the JSON report (it is rendered from ``to_json()``):
a header (summary, model, settings), then one row per item, flagged and uncertain items first, then errors,
real and no-face items. Pictures (a thumbnail with every face box numbered, the face crops, their
explanations, a video's scored frames) are shown for the first ``max_thumbs`` items in that order; the
rest are listed without pictures, so a 10 000-image scan stays a page of a few tens of MB at most.
Crops are recomputed from the file for display; an explanation's overlay is the crop the score came from.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfclip_cli.decision import decide
from mfclip_cli.fsutil import atomic_write_text
from mfclip_cli.report.scan import DISAGREE_MARK, SCORE_DECIMALS, ItemResult, ScanResult
from mfclip_cli.report.text import format_utc, round_to, safe_text

DEFAULT_THUMBS = 500  # items with pictures; the rest are listed without (see the module docstring)
THUMB_SIDE = 320  # px, longer side of an item's thumbnail
CROP_SIDE = 112  # px, face crops and overlays
FRAME_SIDE = 120  # px, a video's frame strip
MAX_CROPS_PER_ITEM = 24  # highest-scoring faces of an item get a crop picture
MAX_FRAMES_PER_VIDEO = 12  # scored frames shown per video (the aggregated ones first)
JPEG_QUALITY = 80

# Page order of the groups (then by score, highest first, within fake / uncertain / real).
GROUP_RANK = {"fake": 0, "uncertain": 1, "error": 2, "real": 3, "no_face": 4}
_COLOURS = {"fake": (220, 38, 38), "real": (22, 163, 74), "uncertain": (217, 119, 6)}  # RGB


def write_html(result: ScanResult, path: str | os.PathLike, max_thumbs: int = DEFAULT_THUMBS) -> None:
    """Write the page atomically: readers see the old file or the whole new one."""
    atomic_write_text(path, render_html(result, max_thumbs=max_thumbs))


def item_group(item: Mapping[str, Any]) -> str:
    """The verdict filter an item falls under: its verdict, or "no_face" / "error"."""
    return item["verdict"] or ("error" if item["status"] == "error" else "no_face")


def page_order(items: Sequence[Mapping[str, Any]]) -> list[int]:
    """Item indices in page order: fake, uncertain, error, real, no_face; by score (highest first) within
    the scored groups, in scan order otherwise."""
    def key(i: int) -> tuple[int, float, int]:
        score = items[i]["score"]
        return GROUP_RANK[item_group(items[i])], -(score if score is not None else 0.0), i

    return sorted(range(len(items)), key=key)


# --- pictures -------------------------------------------------------------------------------------


@dataclass
class _Pictures:
    """The data: URIs one item row shows; empty when the item is beyond the cap or cannot be read."""

    thumb: str | None = None
    crops: dict[int, str] = field(default_factory=dict)  # face index -> crop
    overlays: dict[int, str] = field(default_factory=dict)  # face index -> explanation overlay
    frames: list[tuple[int, float, str, bool]] = field(default_factory=list)  # frame, score, uri, aggregated
    note: str | None = None


def _jpeg_uri(rgb: np.ndarray, side: int) -> str:
    import cv2

    h, w = rgb.shape[:2]
    k = min(1.0, side / max(h, w))
    if k < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _draw_boxes(rgb: np.ndarray, faces: Sequence[tuple[int, Mapping[str, Any], str]], side: int) -> np.ndarray:
    """A copy of ``rgb`` shrunk to ``side`` with each (number, face, verdict) box drawn and numbered."""
    import cv2

    h, w = rgb.shape[:2]
    k = min(1.0, side / max(h, w))
    out = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
    out = np.ascontiguousarray(out)
    for number, face, verdict in faces:
        x1, y1, x2, y2 = (round(v * k) for v in face["box"])
        colour = _COLOURS.get(verdict, (37, 99, 235))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        label = str(number)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = max(y1, th + 4)
        cv2.rectangle(out, (x1, ty - th - 4), (x1 + tw + 4, ty), colour, -1)
        cv2.putText(out, label, (x1 + 2, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _display_crop(image: np.ndarray, face: Mapping[str, Any], policy: Mapping[str, Any]) -> np.ndarray:
    """The face's crop for display: exactly the model's crop when an explanation recorded its transform,
    else recomputed from the box and landmarks with the scan's crop policy."""
    import cv2

    from mfclip_cli.faces import CropPolicy, Face, align_crop

    e = face.get("explanation")
    if e is not None:
        to_crop = cv2.invertAffineTransform(np.asarray(e["crop_to_image"], np.float64))
        size = int(e["crop_size"])
        return cv2.warpAffine(image, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    pol = CropPolicy.from_dict(dict(policy)) if policy else CropPolicy()
    if pol.detector == "none":
        pol = CropPolicy(size=pol.size, margin=0.0, align=False, min_score=0.0, min_face=0)
    lm = face["landmarks"]
    f = Face(box=tuple(face["box"]), score=face["det_score"], landmarks=None if lm is None else tuple(map(tuple, lm)))
    return align_crop(image, f, pol)


def _overlay_uri(path: str | None) -> str | None:
    import cv2

    if not path:
        return None
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if bgr is None else _jpeg_uri(bgr[:, :, ::-1], CROP_SIDE)


def _face_verdicts(item: Mapping[str, Any], threshold: float, band: float) -> list[str]:
    return [decide(f["score"], threshold, band) for f in item["faces"]]


def _crop_faces_wanted(item: Mapping[str, Any]) -> list[int]:
    faces = item["faces"]
    return sorted(sorted(range(len(faces)), key=lambda k: -faces[k]["score"])[:MAX_CROPS_PER_ITEM])


def _image_pictures(path: str, item: Mapping[str, Any], settings: Mapping[str, Any], verdicts: list[str]
                    ) -> _Pictures:
    from mfclip_cli.media import decode_image

    image = decode_image(path, max_pixels=int(settings.get("max_pixels", 100_000_000)))
    pics = _Pictures()
    numbered = [(k + 1, f, verdicts[k]) for k, f in enumerate(item["faces"])]
    pics.thumb = _jpeg_uri(_draw_boxes(image, numbered, THUMB_SIDE), THUMB_SIDE)
    for k in _crop_faces_wanted(item):
        pics.crops[k] = _jpeg_uri(_display_crop(image, item["faces"][k], settings.get("crop") or {}), CROP_SIDE)
    return pics


def _video_pictures(path: str, item: Mapping[str, Any], settings: Mapping[str, Any], verdicts: list[str]
                    ) -> _Pictures:
    from mfclip_cli.media import iter_video_frames
    from mfclip_cli.scan import video_top_k

    faces = item["faces"]
    frame_score: dict[int, float] = {}
    for f in faces:
        frame_score[f["frame"]] = max(frame_score.get(f["frame"], 0.0), f["score"])
    ranked = sorted(frame_score, key=lambda fr: (-frame_score[fr], fr))
    aggregated = set(ranked[:video_top_k(len(ranked), float(settings.get("video_top_frac", 0.25)))])
    shown = set(ranked[:MAX_FRAMES_PER_VIDEO])
    best_frame = ranked[0] if ranked else None
    crop_faces = set(_crop_faces_wanted(item))
    need = shown | {faces[k]["frame"] for k in crop_faces}
    pics = _Pictures()
    frames = iter_video_frames(path, fps=settings.get("fps"), max_frames=settings.get("frames"))
    for frame in frames:
        if frame.index not in need:
            continue
        numbered = [(k + 1, f, verdicts[k]) for k, f in enumerate(faces) if f["frame"] == frame.index]
        if frame.index == best_frame:
            pics.thumb = _jpeg_uri(_draw_boxes(frame.image, numbered, THUMB_SIDE), THUMB_SIDE)
        if frame.index in shown:
            uri = _jpeg_uri(_draw_boxes(frame.image, numbered, FRAME_SIDE), FRAME_SIDE)
            pics.frames.append((frame.index, frame_score[frame.index], uri, frame.index in aggregated))
        for number, f, _ in numbered:
            if number - 1 in crop_faces:
                pics.crops[number - 1] = _jpeg_uri(_display_crop(frame.image, f, settings.get("crop") or {}),
                                                   CROP_SIDE)
    return pics


def _pictures(result_item: ItemResult, item: Mapping[str, Any], settings: Mapping[str, Any], threshold: float
              ) -> _Pictures:
    """Everything an item row shows as pictures; a file that cannot be read again gets a note instead."""
    if item["status"] == "error":
        return _Pictures()  # the row shows the error; the file could not be read the first time
    verdicts = _face_verdicts(item, threshold, float(settings.get("uncertain_band", 0.0)))
    try:
        if item["kind"] == "video":
            pics = _video_pictures(result_item.path, item, settings, verdicts)
        else:
            pics = _image_pictures(result_item.path, item, settings, verdicts)
    except Exception as exc:  # noqa: BLE001 - the page must be written whatever happened to the file since
        pics = _Pictures(note=f"pictures unavailable: {type(exc).__name__}: {exc}")
    for k, f in enumerate(item["faces"]):
        uri = _overlay_uri((f.get("explanation") or {}).get("overlay_png"))
        if uri is not None:
            pics.overlays[k] = uri
    return pics


# --- markup ---------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _score_text(score: float | None) -> str:
    return "–" if score is None else f"{score:.3f}"


def _badge(verdict: str | None, status: str) -> str:
    label = verdict or ("error" if status == "error" else "no face")
    return f'<span class="badge {_e(verdict or status)}">{_e(label)}</span>'


def _bar(score: float, threshold: float) -> str:
    return (f'<div class="bar" title="P(fake) {score:.6f}; threshold {threshold:.3f}">'
            f'<span style="width:{100 * score:.1f}%"></span><i style="left:{100 * threshold:.1f}%"></i></div>')


def _face_entry(k: int, face: Mapping[str, Any], verdict: str, pics: _Pictures, threshold: float) -> str:
    where = "" if face["frame"] is None else f' · frame {face["frame"]} · {face["time_s"]:.1f} s'
    imgs = ""
    if k in pics.crops:
        imgs += f'<img class="crop" src="{pics.crops[k]}" alt="face {k + 1}" width="{CROP_SIDE}" height="{CROP_SIDE}">'
    if k in pics.overlays:
        imgs += (f'<img class="crop" src="{pics.overlays[k]}" alt="face {k + 1} explanation" '
                 f'width="{CROP_SIDE}" height="{CROP_SIDE}">')
    e = face.get("explanation")
    why = ""
    if e is not None:
        why = (f'<div class="why">{_e(e["method"])} ({_e(e["backend"])}) for “{_e(e["target"])}”: '
               f'{_e(e["detail"])}; white box: the patch the noise branch read</div>')
    return (f'<li class="face" data-score="{face["score"]!r}" data-verdict="{verdict}">'
            f'<div class="pics">{imgs}</div><div><b>#{k + 1}</b> {_badge(verdict, "ok")} '
            f'<span class="score">{face["score"]:.3f}</span>{_e(where)}{_bar(face["score"], threshold)}{why}</div></li>')


def _item_row(index: int, rank: int, item: Mapping[str, Any], pics: _Pictures | None, threshold: float,
              band: float) -> str:
    group = item_group(item)
    score = item["score"]
    thumb = f'<img src="{pics.thumb}" alt="thumbnail">' if pics is not None and pics.thumb else ""
    cells = [f'<td class="thumb">{thumb}</td>']
    info = [f'<div class="path">{_e(item["path"])}</div>',
            (f'<div>{_e(item["kind"])} · {_badge(item["verdict"], item["status"])} '
            f'<span class="score">{_score_text(score)}</span> · {len(item["faces"])} face(s)</div>')]
    if item["error"] is not None:
        info.append(f'<div class="error"><code>{_e(item["error"]["code"])}</code> {_e(item["error"]["message"])}</div>')
    if item["video"] is not None:
        v = item["video"]
        info.append(f'<div class="video">{v["frames_scored"]} of {v["frames_read"]} sampled frames scored · '
                    f'{_e(v["aggregation"])}</div>')
        for w in v.get("warnings", []):
            info.append(f'<div class="warn">{_e(w)}</div>')
    if item.get("provenance") is not None:
        info.append(_provenance_line(item["provenance"]))
    if pics is not None and pics.note:
        info.append(f'<div class="warn">{_e(pics.note)}</div>')
    if pics is not None and pics.frames:
        strip = "".join(
            f'<figure class="{"agg" if agg else ""}"><img src="{uri}" alt="frame {fr}">'
            f'<figcaption>frame {fr} · {s:.3f}{" · aggregated" if agg else ""}</figcaption></figure>'
            for fr, s, uri, agg in sorted(pics.frames))
        info.append(f'<div class="frames">{strip}</div>')
    cells.append(f'<td class="info">{"".join(info)}</td>')
    verdicts = [decide(f["score"], threshold, band) for f in item["faces"]]
    empty = _Pictures()
    faces = "".join(_face_entry(k, f, verdicts[k], pics or empty, threshold) for k, f in enumerate(item["faces"]))
    cells.append(f'<td class="faces"><ul>{faces}</ul></td>')
    score_attr = "" if score is None else repr(score)
    return (f'<tr class="item" id="item-{index}" data-index="{index}" data-rank="{rank}" data-verdict="{group}" '
            f'data-score="{score_attr}" data-faces="{len(item["faces"])}" data-path="{_e(item["path"])}">'
            f'{"".join(cells)}</tr>')


def _provenance_line(p: Mapping[str, Any]) -> str:
    """What the file's metadata claims (never part of the verdict), with the marker when it contradicts it."""
    parts = [f'metadata: <b>{_e(p["status"].replace("_", " "))}</b>']
    tools = list(dict.fromkeys(h["tool"] for h in p["generator_hints"]))
    if tools:
        parts.append("names " + _e(", ".join(tools)))
    c = p["c2pa"]
    if c["present"] and c["validation_state"] is not None:
        codes = f' ({_e(", ".join(c["validation_codes"]))})' if c["validation_codes"] else ""
        parts.append(f'C2PA signed by {_e(c["signer"] or "?")}: {_e(c["validation_state"])}{codes}')
    if p["message"]:
        parts.append(_e(p["message"]))
    mark = f' <b title="metadata and pixels disagree">{DISAGREE_MARK}</b>' if p["disagrees_with_pixels"] else ""
    return f'<div class="provenance">{" · ".join(parts)}{mark}</div>'


def _header(report: Mapping[str, Any], threshold: float, shown_pictures: int) -> str:
    s, m = report["summary"], report["model"]
    counts = "".join(f"<div><b>{s[k]}</b> {label}</div>" for k, label in (
        ("items", "items"), ("faces", "faces"), ("fake", "fake"), ("real", "real"),
        ("uncertain", "uncertain"), ("no_face", "no face"), ("errors", "errors")))
    prov = s["provenance"]
    if prov["read"]:
        counts += "".join(f"<div><b>{prov[k]}</b> {label}</div>" for k, label in (
            ("claims_generated", "metadata claims generated"), ("claims_captured", "metadata claims captured"),
            ("invalid_signature", "invalid signature"), ("disagreements", f"{DISAGREE_MARK} disagree")))
    settings = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in report["settings"].items())
    banner = ('<p class="interrupted">Interrupted: this report holds only the items finished before the scan '
              'was stopped.</p>') if report["interrupted"] else ""
    capped = ""
    if shown_pictures < s["items"]:
        capped = (f'<p class="note">Pictures for the first {shown_pictures} of {s["items"]} items in page order '
                  f'(--html-thumbs); the others are listed without pictures.</p>')
    return (f'<header><h1>mfclip scan report</h1>{banner}<div class="counts">{counts}</div>'
            f'<p>Model <code>{_e(m["path"])}</code> · sha256 <code>{_e(m["sha256"])}</code> · threshold '
            f'<b>{threshold}</b> · {_e(report["tool"]["name"])} {_e(report["tool"]["version"])} · '
            f'{_e(report["started_at"])} → {_e(report["finished_at"])}</p>{capped}'
            f'<details><summary>Settings</summary><table class="settings">{settings}</table></details></header>')


_CONTROLS = """<nav><label>Sort <select id="sort"><option value="rank">flagged first</option>
<option value="score-desc">score, highest first</option><option value="score-asc">score, lowest first</option>
<option value="index">scan order</option></select></label>
<label>Show <select id="verdict"><option value="all">all verdicts</option><option value="fake">fake</option>
<option value="uncertain">uncertain</option><option value="real">real</option><option value="no_face">no face</option>
<option value="error">error</option></select></label> <span id="shown"></span></nav>"""

# Sort and filter in the page; rows without a score sort last either way.
_SCRIPT = """(function () {
  var body = document.querySelector('#items tbody');
  var rows = Array.prototype.slice.call(body.querySelectorAll('tr.item'));
  var sort = document.getElementById('sort'), pick = document.getElementById('verdict');
  function score(r, sign) { var s = parseFloat(r.dataset.score); return isNaN(s) ? Infinity : sign * s; }
  function apply() {
    var key = sort.value, want = pick.value, shown = 0;
    rows.slice().sort(function (a, b) {
      if (key === 'score-desc') return score(a, -1) - score(b, -1) || a.dataset.index - b.dataset.index;
      if (key === 'score-asc') return score(a, 1) - score(b, 1) || a.dataset.index - b.dataset.index;
      return a.dataset[key] - b.dataset[key];
    }).forEach(function (r) {
      r.hidden = !(want === 'all' || r.dataset.verdict === want);
      if (!r.hidden) shown++;
      body.appendChild(r);
    });
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' items shown';
    document.body.setAttribute('data-ready', rows.length);
  }
  sort.addEventListener('change', apply);
  pick.addEventListener('change', apply);
  apply();
})();"""

_STYLE = """body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 1.5em 2em;color:#111;background:#fafafa}
h1{font-size:1.4em;margin:.8em 0 .4em}code{font-size:.9em;word-break:break-all}
.counts{display:flex;gap:1.2em;flex-wrap:wrap;font-size:1.05em}.counts b{font-size:1.3em}
.interrupted{background:#fde68a;padding:.5em;border-radius:4px;font-weight:bold}.note{color:#555}
table.settings th{text-align:left;padding-right:1em;font-weight:normal;color:#555}
nav{position:sticky;top:0;background:#fafafa;padding:.6em 0;border-bottom:1px solid #ddd;z-index:1}
nav label{margin-right:1.2em}#items{border-collapse:collapse;width:100%}
#items td{border-bottom:1px solid #ddd;vertical-align:top;padding:.6em .5em}
td.thumb{width:330px}td.thumb img{max-width:320px;display:block}.path{font-weight:600;word-break:break-all}
.badge{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;background:#6b7280;font-size:.9em}
.badge.fake{background:#dc2626}.badge.real{background:#16a34a}.badge.uncertain{background:#d97706}
.badge.error{background:#7c3aed;color:#fff}.score{font-variant-numeric:tabular-nums;font-weight:600}
.error{color:#7c3aed}.warn{color:#b45309}.video{color:#333}ul{list-style:none;margin:0;padding:0}
li.face{display:flex;gap:.6em;margin-bottom:.6em}.pics{display:flex;gap:4px}img.crop{border-radius:3px}
.bar{position:relative;width:180px;height:8px;background:#e5e7eb;border-radius:4px;margin-top:4px}
.bar span{position:absolute;left:0;top:0;bottom:0;background:#374151;border-radius:4px}
.bar i{position:absolute;top:-3px;bottom:-3px;width:2px;background:#dc2626}
li.face[data-verdict=fake] .bar span{background:#dc2626}li.face[data-verdict=real] .bar span{background:#16a34a}
li.face[data-verdict=uncertain] .bar span{background:#d97706}.why{color:#555;font-size:.85em;max-width:28em}
.frames{display:flex;flex-wrap:wrap;gap:4px;margin-top:.4em}figure{margin:0;font-size:.75em;color:#555}
figure.agg img{outline:3px solid #dc2626}"""


def render_html(result: ScanResult, max_thumbs: int = DEFAULT_THUMBS) -> str:
    """The whole page as a string (see the module docstring)."""
    report = result.to_json()
    items = report["items"]
    threshold = round_to(result.model.threshold, SCORE_DECIMALS)  # as the JSON report states it
    band = float(report["settings"].get("uncertain_band", 0.0))
    order = page_order(items)
    rows = []
    for rank, i in enumerate(order):
        pics = _pictures(result.items[i], items[i], report["settings"], threshold) if rank < max_thumbs else None
        rows.append(_item_row(i, rank, items[i], pics, threshold, band))
    title = f"mfclip scan · {report['summary']['items']} items · {format_utc(result.finished_at)}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(safe_text(title))}</title><style>{_STYLE}</style></head><body>"
            f"{_header(report, threshold, min(max_thumbs, len(items)))}{_CONTROLS}"
            "<table id=\"items\"><thead><tr><th>picture</th><th>item</th><th>faces</th></tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table><script>{_SCRIPT}</script></body></html>\n")
