"""The main job: score every face in images and videos; never stop on a bad file.

Pipeline: one pool of worker threads (one per CPU by default) runs two kinds of task, each single-threaded:
"prepare" (decode, detect, crop, noise patch) for upcoming files, and "classify" for batches of faces
gathered across files. Every core stays busy with whatever work is ready, and single-threaded kernels
waste no time in intra-op synchronisation (on 2 cores this beat a classifier with its own thread pool
beside the prepare workers). The main thread only orders results: they stay in input order.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .cpus import usable_cpus
from .decision import decide, resolve_inference
from .errors import MediaError, MfclipError
from .events import EventHook, no_event
from .faces import crop_faces, image_from_crop_transform, make_detector
from .faces.types import CropPolicy, Face
from .media import InputItem, collect_inputs, decode_image, iter_video_frames, shard
from .model.preprocess import PreprocessConfig, patch_box, prepare_batch_with_patches
from .provenance import Provenance, read_provenance
from .report import (
    ExplanationPictures,
    FaceExplanation,
    FaceResult,
    ItemResult,
    ModelInfo,
    ScanResult,
    utc_now,
)
from .runtime import Backend, load_backend
from .scan_options import ScanOptions

if TYPE_CHECKING:
    from .explain import Explainer

CPU_TASK_FACES = 8  # most faces per classify task on CPU (see _classify_in_order)


def resolved_workers(opts: ScanOptions) -> int:
    return opts.workers if opts.workers is not None else usable_cpus()


def scan_backend(opts: ScanOptions) -> Backend:
    """The classifier of ``opts.weights`` as run_scan loads it: on CPU single-threaded, since the pool runs
    batches side by side."""
    from .runtime import resolve_device

    if opts.weights is None:
        raise MfclipError("no model to scan with: set ScanOptions.weights (a checkpoint, or an exported folder "
                          "with backend onnx)")
    on_cpu = resolve_device(opts.device) == "cpu"
    return load_backend(opts.backend, opts.weights, device=opts.device, threads=1 if on_cpu else None)


@dataclass
class _Prepared:
    """One input after decode/detect/crop: faces with their model inputs, or an error."""

    item: InputItem
    faces: list[tuple[Face, int | None, float | None]] = field(default_factory=list)  # face, frame, time
    crop_policies: list[CropPolicy] = field(default_factory=list)  # how each face was cropped
    image: np.ndarray | None = None  # (F, 3, S, S)
    noise: np.ndarray | None = None
    crops: list[np.ndarray] | None = None  # --explain only: the RGB crops the inputs were made from
    patches: np.ndarray | None = None  # (F,) the noise branch's patch index per face
    frames_read: int = 0
    frames_with_faces: int = 0
    warnings: list[str] = field(default_factory=list)  # e.g. a video whose stream breaks off
    error: tuple[str, str] | None = None
    provenance: Provenance | None = None  # what the file's metadata claims; the model never sees it


class _Preparer:
    """Turns an input into crops + model inputs. Runs in worker threads; the detector is thread-safe."""

    def __init__(self, opts: ScanOptions, policy: CropPolicy, pre: PreprocessConfig):
        self.opts = opts
        self.policy = policy
        self.pre = pre
        kw = {"threads": 1} if policy.detector == "retinaface" else {}
        self.detector = None if policy.detector == "none" else make_detector(policy.detector, **kw)
        self.full_policy = CropPolicy.none(pre.size)

    def _crops(self, image: np.ndarray) -> tuple[list[tuple[Face, np.ndarray]], CropPolicy]:
        pairs = crop_faces(image, self.detector, self.policy, max_faces=self.opts.max_faces)
        if not pairs and self.opts.no_face == "full":
            return crop_faces(image, None, self.full_policy), self.full_policy
        return pairs, self.policy

    def __call__(self, item: InputItem) -> _Prepared:
        out = _Prepared(item)
        if self.opts.provenance:  # here, in the worker, so it runs beside other files' decoding
            out.provenance = read_provenance(item.path, item.kind)
        crops: list[np.ndarray] = []
        try:
            if item.kind == "image":
                image = decode_image(item.path, max_pixels=self.opts.max_pixels)
                out.frames_read = 1
                pairs, used = self._crops(image)
                for face, crop in pairs:
                    out.faces.append((face, None, None))
                    out.crop_policies.append(used)
                    crops.append(crop)
                out.frames_with_faces = int(bool(crops))
            else:
                frames = iter_video_frames(item.path, fps=self.opts.fps, max_frames=self.opts.frames)
                for frame in frames:
                    out.frames_read += 1
                    pairs, used = self._crops(frame.image)
                    out.frames_with_faces += int(bool(pairs))
                    for face, crop in pairs:
                        out.faces.append((face, frame.index, frame.time_s))
                        out.crop_policies.append(used)
                        crops.append(crop)
                out.warnings.extend(frames.warnings)
            if crops:
                out.image, out.noise, out.patches = prepare_batch_with_patches(crops, self.pre)
                if self.opts.explain:
                    out.crops = crops
        except MediaError as exc:
            out.error = (exc.code, exc.message)
        except MemoryError:
            out.error = ("out_of_memory", f"{item.path}: not enough memory to decode; lower --max-pixels")
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the scan
            out.error = ("internal_error", f"{item.path}: {type(exc).__name__}: {exc}")
        return out


def video_top_k(frames_scored: int, top_frac: float) -> int:
    """How many of a video's scored frames its score averages: ceil(top_frac * frames scored), at least 1."""
    return max(1, math.ceil(top_frac * frames_scored))


def aggregate_video(frame_scores: list[float], top_frac: float) -> tuple[float, str]:
    """Video score = mean of the top-k frame scores, k = ceil(top_frac * frames scored)."""
    k = video_top_k(len(frame_scores), top_frac)
    top = sorted(frame_scores, reverse=True)[:k]
    return float(np.mean(top)), f"mean of top {k} of {len(frame_scores)} frame scores (frame score = max face score)"


def faces_to_explain(p: _Prepared, scores: np.ndarray, top_frac: float) -> list[int]:
    """Indices of the faces ``--explain`` explains: every face of an image; in a video, the faces of the
    frames its score averages (the top-k frames by frame score, ties to the earlier frame)."""
    if p.item.kind != "video":
        return list(range(len(p.faces)))
    frame_score: dict[int, float] = {}
    for (_, frame, _), s in zip(p.faces, scores):
        frame_score[frame] = max(frame_score.get(frame, 0.0), float(s))
    ranked = sorted(frame_score, key=lambda f: (-frame_score[f], f))
    top = set(ranked[:video_top_k(len(ranked), top_frac)])
    return [i for i, (_, frame, _) in enumerate(p.faces) if frame in top]


def _explain_item(p: _Prepared, scores: np.ndarray, explainer: Explainer, threshold: float, grid: int,
                  opts: ScanOptions) -> list[FaceExplanation | None]:
    """Explanations of ``p``'s faces (None for faces not explained), from the arrays they were scored on."""
    out: list[FaceExplanation | None] = [None] * len(p.faces)
    size = p.image.shape[-1]
    for i in faces_to_explain(p, scores, opts.video_top_frac):
        face = p.faces[i][0]
        e = explainer.explain(p.image[i], p.noise[i], decide(float(scores[i]), threshold))  # band 0: fake or real
        to_image = image_from_crop_transform(face, p.crop_policies[i])
        idx = int(p.patches[i])
        out[i] = FaceExplanation(
            method=e.method, backend=e.backend, target=e.target, detail=e.detail, patch_index=idx,
            patch_box=patch_box(idx, size, grid), crop_size=size,
            crop_to_image=tuple(tuple(float(v) for v in row) for row in to_image),
            pictures=ExplanationPictures(crop=p.crops[i], heat=e.heat))
    return out


def _finish(p: _Prepared, scores: np.ndarray, threshold: float, opts: ScanOptions,
            explanations: Sequence[FaceExplanation | None] | None = None) -> ItemResult:
    kind = p.item.kind
    if p.error is not None:
        return ItemResult.failed(p.item.path, kind, *p.error, provenance=p.provenance)
    video = None
    explanations = explanations if explanations is not None else [None] * len(p.faces)
    faces = [
        FaceResult(box=f.box, landmarks=f.landmarks, det_score=float(min(max(f.score, 0.0), 1.0)),
                   score=float(s), frame=frame, time_s=t, explanation=e)
        for (f, frame, t), s, e in zip(p.faces, scores, explanations)
    ]
    if kind == "video":
        per_frame: dict[int, float] = {}
        for fr in faces:
            per_frame[fr.frame] = max(per_frame.get(fr.frame, 0.0), fr.score)
        agg = "no frame had a face"
        score = None
        if per_frame:
            score, agg = aggregate_video(list(per_frame.values()), opts.video_top_frac)
        video = {"frames_read": p.frames_read, "frames_scored": len(per_frame), "aggregation": agg,
                 "warnings": list(p.warnings)}
    else:
        score = max((fr.score for fr in faces), default=None)
    if score is None:
        return ItemResult(path=p.item.path, kind=kind, status="no_face", video=video, provenance=p.provenance)
    score = float(min(max(score, 0.0), 1.0))
    return ItemResult(path=p.item.path, kind=kind, status="ok", score=score,
                      verdict=decide(score, threshold, opts.uncertain_band), faces=faces, video=video,
                      provenance=p.provenance)


def run_scan(opts: ScanOptions, *, on_event: EventHook = no_event, stop: threading.Event | None = None,
             backend: Backend | None = None) -> ScanResult:
    """Scan ``opts.paths`` (and ``opts.from_file``) with ``opts.weights`` (or ``backend``, already loaded).

    Events, in this order:

    - "inputs" ``{"paths": [...]}``: every input found (after ``--shard``), before any is read. A listener
      may refuse them by raising MfclipError (the CLI does when a report target is one of them).
    - "total" ``{"total": n}``: the scan starts (the moment a caller may open its report streams).
    - "item" ``{"index": i, "item": ItemResult}``: each result as it finishes, in input order. With
      ``opts.explain`` its explained faces carry their crop and heat map (``ExplanationPictures``) for a
      listener to write; the result keeps the item without those arrays, so a long scan does not hold them.

    Ctrl-C (KeyboardInterrupt) or ``stop`` ends the scan early with ``interrupted=True`` and every item
    finished so far. Usage errors (bad weights, bad options) raise MfclipError before any file is read and
    before "total".
    """
    started = utc_now()
    backend = backend or scan_backend(opts)
    info = backend.info
    chosen = resolve_inference(info.threshold, info.crop, cli_threshold=opts.threshold, min_face=opts.min_face,
                               detector=opts.detector)
    policy, threshold = chosen.crop, chosen.threshold
    explainer = None
    if opts.explain:
        from .explain import make_explainer

        explainer = make_explainer(backend)
    items, input_errors = collect_inputs(opts.paths, from_file=opts.from_file, exclude=opts.exclude)
    if opts.shard is not None:
        k, n = opts.shard
        items = shard(items, k, n)
        # Inputs that failed to resolve belong to one shard too, else N machines would each report them.
        input_errors = [e for i, e in enumerate(sorted(input_errors, key=lambda e: e.path)) if i % n == k - 1]
    on_event("inputs", {"paths": [i.path for i in items] + [e.path for e in input_errors]})
    total = len(items) + len(input_errors)
    on_event("total", {"total": total})
    results: list[ItemResult] = []

    def finished(item: ItemResult) -> None:
        index = len(results)
        results.append(item.without_pictures() if opts.explain else item)
        on_event("item", {"index": index, "item": item})

    for err in input_errors:
        finished(ItemResult.failed(err.path, "image", err.code, err.message))

    preparer = _Preparer(opts, policy, info.preprocess)
    interrupted = False
    workers = resolved_workers(opts)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfclip-scan")
    try:
        for result in _classify_in_order(items, preparer, pool, workers, backend, threshold, opts, stop,
                                         explainer):
            finished(result)
    except (KeyboardInterrupt, _Stopped):
        interrupted = True
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
    # a stop that came after the last item leaves a complete scan
    interrupted = interrupted or len(results) < total

    settings = opts.settings()
    settings.update(workers=workers, threshold=threshold, crop=policy.to_dict(), preprocess=info.preprocess.to_dict(),
                    backend_device=info.device, inputs=list(opts.paths))
    return ScanResult(
        model=ModelInfo(path=info.path, sha256=info.sha256, threshold=threshold),
        settings=settings, started_at=started, finished_at=utc_now(), items=results,
        interrupted=interrupted,
    )


# a classify task's result: P(fake) of every face, and per item its faces' explanations (with --explain)
_Classified = tuple[np.ndarray, list[list[FaceExplanation | None]] | None]


class _Stopped(Exception):
    """``stop`` was set while the scan waited for work."""


def _wait(fut: Future, stop: threading.Event | None):
    """``fut.result()``, giving up (raising _Stopped) soon after ``stop`` is set."""
    if stop is None:
        return fut.result()
    while True:
        try:
            return fut.result(timeout=0.1)
        except TimeoutError:
            if stop.is_set():
                raise _Stopped from None


def _classify_in_order(items: list[InputItem], preparer: _Preparer, pool: ThreadPoolExecutor, workers: int,
                       backend: Backend, threshold: float, opts: ScanOptions, stop: threading.Event | None,
                       explainer: Explainer | None = None) -> Iterator[ItemResult]:
    """Prepare tasks run ahead (bounded prefetch); faces are batched across files into classify tasks on the
    same pool; finished batches are reported in input order."""
    prefetch = max(4, workers * 4)
    # On CPU each classify task is single-threaded: small tasks (a batch of --batch-size faces split into
    # several) let every worker share the work to the last face, and run no slower per face (ORT on
    # effnet-lite0, one thread: 15.6 ms/face at 8, 17.1 at 32). A GPU gets the whole batch in one call.
    task_faces = min(opts.batch_size, CPU_TASK_FACES) if backend.info.device == "cpu" else opts.batch_size
    max_inflight = max(2, workers) * math.ceil(opts.batch_size / task_faces)  # tasks submitted, not reported
    prep_q: deque[Future[_Prepared]] = deque()
    batches: deque[tuple[list[_Prepared], list[_Prepared], Future[_Classified] | None]] = deque()
    it = iter(items)
    pending: list[_Prepared] = []
    pending_faces = 0

    def classify(with_faces: list[_Prepared]) -> _Classified:
        image = np.concatenate([p.image for p in with_faces])
        noise = np.concatenate([p.noise for p in with_faces])
        scores = np.concatenate([backend.predict(image[i:i + opts.batch_size], noise[i:i + opts.batch_size])
                                 for i in range(0, len(image), opts.batch_size)])
        if explainer is None:
            return scores, None
        explanations, offset = [], 0
        for p in with_faces:  # in the same task: the crops' arrays are at hand and the pool shares the work
            explanations.append(_explain_item(p, scores[offset:offset + len(p.faces)], explainer, threshold,
                                              preparer.pre.grid, opts))
            offset += len(p.faces)
        return scores, explanations

    def submit_batch(parts: int = 1) -> None:
        """Queue the pending items as ``parts`` classify tasks of about equal face counts (in order)."""
        nonlocal pending, pending_faces
        share = max(1, math.ceil(pending_faces / parts))
        group: list[_Prepared] = []
        n = 0
        for i, p in enumerate(pending):
            group.append(p)
            n += len(p.faces)
            if n >= share or i == len(pending) - 1:
                with_faces = [q for q in group if q.image is not None]
                batches.append((group, with_faces, pool.submit(classify, with_faces) if with_faces else None))
                group, n = [], 0
        pending, pending_faces = [], 0

    def report(limit: int) -> Iterator[ItemResult]:
        """Results of finished head batches, waiting for the head while more than ``limit`` are queued."""
        while batches and (len(batches) > limit or batches[0][2] is None or batches[0][2].done()):
            group, with_faces, fut = batches.popleft()
            flat, explained = _wait(fut, stop) if fut is not None else (np.zeros(0), None)
            scores, offset = {}, 0
            for p in with_faces:
                scores[id(p)] = flat[offset:offset + len(p.faces)]
                offset += len(p.faces)
            by_item = dict(zip(map(id, with_faces), explained)) if explained is not None else {}
            for p in group:
                yield _finish(p, scores.get(id(p), np.zeros(0)), threshold, opts, by_item.get(id(p)))

    exhausted = False  # every input has a prepare task: the scan's tail is queued

    def refill() -> None:
        nonlocal exhausted
        while len(prep_q) < prefetch:
            nxt = next(it, None)
            if nxt is None:
                exhausted = True
                return
            prep_q.append(pool.submit(preparer, nxt))

    refill()
    while prep_q:
        if stop is not None and stop.is_set():
            return
        prepared = _wait(prep_q[0], stop)
        prep_q.popleft()
        refill()
        pending.append(prepared)
        pending_faces += len(prepared.faces)
        # A batch goes out when full, at the end, or when the pool would otherwise idle (nothing else is
        # ready and no batch is running): big batches under load, low latency on small scans.
        idle = not prep_q or (not prep_q[0].done() and not any(f is not None and not f.done()
                                                                for _, _, f in batches))
        if pending_faces >= opts.batch_size or idle:
            # Once the tail is queued, batches are split over the workers: a whole batch is one long
            # single-threaded task, and a core would idle while another finishes it.
            submit_batch(parts=max(workers if exhausted else 1, math.ceil(pending_faces / task_faces)))
        yield from report(max_inflight)
    if pending:
        submit_batch(parts=max(workers, math.ceil(pending_faces / task_faces)))
    yield from report(0)
