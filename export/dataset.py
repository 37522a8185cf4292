"""Training clips: 16 RGB frames + 16 TV-L1 flow fields centred on each labelled frame.

API (what ``export/train.py`` and ``export/evaluate.py`` use)::

    from export.dataset import VideoSource, ClipDataset, sources_from_files, load_arenas
    from export.folds import contiguous_folds, video_folds, Fold

    # one VideoSource per (video, arena): the arena's ROI in the full frame and its labels
    sources = sources_from_files("demo/synth_side.mp4", "demo/synth_side.labels.csv",
                                 arenas_json="demo/synth_side.arenas.json", classes=SIDE_CLASSES)
    ds = ClipDataset(sources, classes=SIDE_CLASSES, size_px=112, cache_dir="runs/cache",
                     flow_config=FlowConfig(), augment=False, fps=15.0, frame_step=1)
    # crop="mouse": each arena decoded at 2 x size_px, its flow there, and every clip cut as the
    # size_px window around the mouse (stream.mouse_crop); default crop="roi", the whole arena
    rgb, flow, label = ds[i]     # (3,16,S,S) float32 [-1,1], (2,16,S,S) float32 [-1,1], int64
    ds.items                     # (M, 3) int64: source index, centre frame index, label per item
    ds.labels                    # (M,) int64 == ds.items[:, 2]
    ds.class_counts()            # (K,) int64
    ds.sample_weights()          # (M,) float64, inverse class frequency (mean 1)
    ds.make_sampler(num_samples=None, seed=0) -> torch WeightedRandomSampler (class-balanced)
    ds.with_augment(True)        # same items and caches, training augmentation on
    ds.source_labels(s)          # (num_frames,) per-frame labels of source s in ds.classes
    ds.num_frames(s); ds.sources[s]
    folds = contiguous_folds(ds.items, k=5, gap_frames=16)   # list[Fold(train, test)] item indices
    train = torch.utils.data.Subset(ds.with_augment(True), folds[0].train)

Conventions are those of ``stream.preprocess`` (same code as live inference): the clip for frame
``t`` is frames ``t-8 .. t+7`` (``clip_indices``, edge frames repeated, optional ``stride``), each
frame cropped by its arena's ROI and resized to ``size_px`` (``crop_resize``); flow for clip frame
``i`` is ``stream.flow.TVL1`` from frame ``i - stride`` to frame ``i`` on the grey crop at model
size (zero for the first frame, and zero for a frame repeated as edge padding, since a repeated
frame has not moved), encoded with ``encode_flow``.

Frame rate (``fps``, what ``export-train`` uses): every video is decoded through the live capture
(``stream.capture.Capture`` and its ``FrameResampler``: model tick ``k`` shows the first source
frame at or after ``k / fps`` seconds, within a tolerance), so a 25 or 30 fps camera gives a
15 fps model exactly the frames ``stream-run`` gives it, and a training clip is the clip the live
ring builds for the same frame. Clip indices, flow and ``frame_step`` then count model-rate
frames, and each takes the label of the source frame it shows. Without ``fps`` every source
frame is kept and ``stride`` spreads a clip (the older integer-step subsampling).

Input crop (``crop``): ``"roi"`` (default) resizes the whole arena to ``size_px``. ``"mouse"``
decodes the arena at ``stream.mouse_crop.DECODE_SCALE`` x ``size_px``, computes the TV-L1 flow at that size,
locates the mouse in every frame (``stream.mouse_crop.track_positions``, causal, cached beside the
frames) and cuts each clip, RGB and flow alike, as the window of ``CROP_FRACTION`` of the arena
centred on the mouse at the clip's centre frame, fixed for the clip's 16 frames. With 2 x and 0.5 the
window is ``size_px`` wide: the mouse at the pixel density of a 2 x ROI crop, at the 1 x model's
cost. The flow stays in pixels of the 2 x image, the scale the window shows.

Why caches: TV-L1 is by far the most expensive step, and every epoch would redo it. The decoded
crops (uint8) and the flow (``flow_to_uint8`` codes, one byte per value) of each (video, ROI,
size) are stored as ``.npy`` files under ``cache_dir`` and memory-mapped. The file names carry
the sha256 of the video file and a hash of the flow settings, so editing either builds a new
cache instead of reusing a stale one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from export.annotations import UNLABELLED, Annotation, AnnotationError, read_annotations
from stream.atomic import atomic_path, atomic_write
from stream.errors import UserError
from stream.flow import FLOW_KEYS_ADDED_LATER, TVL1, FlowConfig, encode_flow, flow_from_uint8, flow_to_uint8
from stream.modelfile import CROP_MOUSE, CROP_ROI, CROPS
from stream.mouse_crop import CROP_FRACTION, DECODE_SCALE, Window, crop_window, track_positions
from stream.preprocess import Roi, clip_indices, crop_resize, rgb_clip, to_grey

__all__ = [
    "VideoSource",
    "ClipDataset",
    "sources_from_files",
    "load_arenas",
    "video_sha256",
    "probe_video",
    "DEFAULT_SIZE_PX",
    "flow_input",
]

log = logging.getLogger(__name__)

DEFAULT_SIZE_PX = 112  # the bundled model's input size (model card input_size_px)
FLOW_BATCH_PAIRS = 32  # frame pairs per TVL1 call: batched tensors amortise per-call overhead
CACHE_FORMAT_VERSION = 1  # bump when the cache layout or the flow/crop definition changes
HASH_CHUNK_BYTES = 1 << 20
# augmentation strengths: small enough that a flipped/brightened/cropped clip is still a
# plausible camera view of the same behaviour
AUG_FLIP_P = 0.5
AUG_GAIN_RANGE = (0.8, 1.2)  # multiplicative brightness/contrast on [-1, 1] RGB
AUG_BIAS_RANGE = (-0.1, 0.1)  # additive brightness on [-1, 1] RGB (~ +-13 grey levels)
AUG_MAX_CROP_FRACTION = 0.125  # random crop removes up to 1/8 of the side, then resizes back
MOUSE_TRACK_VERSION = 2  # bump when stream.mouse_crop's locator changes: a new track cache, not a stale one
AUG_CHUNK_FRAMES = 32  # frames augmented per call: cv2.resize takes at most 128 channels (3 per frame)

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def video_sha256(path: Path) -> str:
    """Content hash of a video file (memoised per path, size and mtime within the process)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


@dataclass(frozen=True)
class VideoSource:
    """One animal: a video file, the arena's region of interest in it (None = whole frame), labels."""

    video_path: Path
    annotation: Annotation
    roi: Roi | None = None
    name: str = ""  # for reports, e.g. "mouse3.mp4#arena1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "video_path", Path(self.video_path))
        if not self.name:
            suffix = f"#{self.annotation.subject}" if self.annotation.subject else ""
            object.__setattr__(self, "name", self.video_path.name + suffix)


def load_arenas(path: Path | str) -> list[tuple[str, Roi]]:
    """Arena names and ROIs from an ``.arenas.json`` (format written by ``export-synth``).

    ``{"arenas": [{"id": "arena0", "roi": [x, y, w, h]}, ...], ...}`` (the ``stream.arenas`` format;
    ``roi`` may be ``"x,y,w,h"``, the name may be under ``name``, a missing one is ``arena<i>``)
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        out = []
        for i, a in enumerate(data["arenas"]):
            raw = a["roi"]
            roi = Roi.parse(raw) if isinstance(raw, str) else Roi(*(int(v) for v in raw))
            out.append((str(a.get("id", a.get("name", f"arena{i}"))), roi))
        return out
    except FileNotFoundError:
        raise UserError(f"{path}: arenas file not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an arenas file ({exc}); expected "
                        '{"arenas": [{"id": "arena0", "roi": [x, y, w, h]}]}') from None  # fmt: skip


def load_fitting_arenas(arenas_json: Path | str, video_path: Path, width: int, height: int) -> list[tuple[str, Roi]]:
    """``load_arenas``, refused in one line when an arena does not fit the ``width`` x ``height`` video."""
    arenas = load_arenas(arenas_json)
    for name, roi in arenas:
        if not roi.fits(width, height):
            raise UserError(f"{arenas_json}: arena {name} {roi} does not fit the {width}x{height} video {video_path}")
    return arenas


def probe_video(video_path: Path) -> tuple[int, float, int, int]:
    """(frame count as the container says, fps, width, height) without decoding."""
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise UserError(f"{video_path}: cannot open video (missing file or unsupported codec)")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return n, fps, w, h


_probe = probe_video  # export/train.py imports this name


def sources_from_files(
    video_path: Path | str,
    annotation_path: Path | str,
    *,
    arenas_json: Path | str | None = None,
    classes: Sequence[str] | None = None,
    fps: float | None = None,
) -> list[VideoSource]:
    """VideoSources of one video: annotations matched to arenas by subject name (or order).

    Without ``arenas_json`` there must be one annotation, and the whole frame is the arena.
    """
    video_path = Path(video_path)
    if not video_path.exists():
        raise UserError(f"{video_path}: video not found")
    n, video_fps, width, height = probe_video(video_path)
    anns = read_annotations(annotation_path, fps=fps or video_fps or None, classes=classes)
    if arenas_json is None:
        if len(anns) != 1:
            raise UserError(f"{annotation_path}: {len(anns)} subjects/arenas but no arenas file; pass the .arenas.json")
        return [VideoSource(video_path, anns[0], None)]
    arenas = load_fitting_arenas(arenas_json, video_path, width, height)
    by_name = {name: roi for name, roi in arenas}
    out = []
    for i, a in enumerate(anns):
        if a.subject is not None and a.subject in by_name:
            roi = by_name[a.subject]
        elif a.subject is None and len(anns) == 1 and len(arenas) == 1:
            roi = arenas[0][1]
        elif a.subject is None and len(anns) == len(arenas):
            roi = arenas[i][1]
        else:
            raise UserError(f"{annotation_path}: subject {a.subject!r} is not an arena in {arenas_json} "
                            f"({sorted(by_name)})")  # fmt: skip
        out.append(VideoSource(video_path, a, roi))
    return out


def _flow_key(cfg: FlowConfig) -> str:
    # a key added later at its neutral value is left out, so caches made before it existed stay valid
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if not (k in FLOW_KEYS_ADDED_LATER and v == FLOW_KEYS_ADDED_LATER[k])}
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ticks_path(frames_path: Path) -> Path:
    """Beside a model-rate frames cache: which source frame each model-rate frame shows."""
    return frames_path.with_name(frames_path.name.replace(".frames.npy", ".ticks.json"))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:  # np.save appends .npy to any other name
        np.save(tmp, array)


def flow_devices(device: str) -> list[str]:
    """Where to compute cached flow: ``"cuda"`` means EVERY visible GPU (``cuda:0``, ``cuda:1``, ...);
    ``"cpu"``, ``"cuda:N"`` or a list written ``"cpu,cpu"`` / ``"cuda:0,cuda:2"`` mean those."""
    if device == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError("flow on cuda: this machine has no CUDA device; use cpu")
        return [f"cuda:{i}" for i in range(count)]
    return [d.strip() for d in device.split(",") if d.strip()] or ["cpu"]


def flow_codes(
    grey: np.ndarray,
    stride: int,
    flow_config: FlowConfig,
    devices: Sequence[str],
    *,
    batch_pairs: int = FLOW_BATCH_PAIRS,
    on_batch=None,
) -> np.ndarray:
    """``(N, 2, S, S)`` uint8 flow codes of grey frames ``(N, S, S)``: frame ``i - stride`` -> ``i``.

    The pairs are cut into batches of ``batch_pairs`` exactly as one device would run them, and the
    batches are dealt out in contiguous runs, one run per device, each run in its own thread (while
    one thread holds the GIL to launch kernels, the other GPUs keep computing). Every batch is the batch a single device computes, so the
    result does not depend on how many devices there are (bit-identical for devices of one kind).
    Frames before ``stride`` have no predecessor: zero flow (code 128).
    """
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    n, s = grey.shape[0], grey.shape[-1]
    codes = np.full((n, 2, s, s), 128, dtype=np.uint8)  # 128 = zero flow (first frame(s))
    pairs = np.arange(stride, n)
    batches = [pairs[i : i + batch_pairs] for i in range(0, pairs.size, batch_pairs)]
    runs = np.array_split(np.arange(len(batches)), max(1, min(len(devices), len(batches))))

    def run(device: str, batch_ids: np.ndarray) -> None:
        # the current CUDA device is per thread: streams and CUDA graphs of this run live on its own GPU
        with torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext():
            tvl1 = TVL1(flow_config, device=device)
            for b in batch_ids:
                idx = batches[b]
                flow = tvl1(grey[idx - stride], grey[idx])  # (B, 2, S, S) px on the device
                codes[idx] = flow_to_uint8(flow).cpu().numpy()  # quantise on the device: 4x less to copy; disjoint rows per thread
                if on_batch is not None:
                    on_batch(idx.size)

    try:
        if len(runs) <= 1:
            for ids in runs:
                run(devices[0], ids)
        else:
            with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="tvl1") as pool:
                for future in [pool.submit(run, devices[d], ids) for d, ids in enumerate(runs)]:
                    future.result()  # re-raises a device's error here
    finally:
        for device in {d for d in devices if d.startswith("cuda")}:
            with torch.cuda.device(device):
                torch.cuda.empty_cache()  # under torchrun, rank 0 must not keep memory on the other ranks' GPUs
    return codes


class ClipDataset(Dataset):
    """Clips centred on every labelled frame (every ``frame_step``-th) of every source.

    Building it decodes each video once (all its arenas together) and computes the flow of any
    (video, ROI, size, stride, flow settings) not yet in ``cache_dir``; later constructions only
    memory-map the cache files.
    """

    def __init__(
        self,
        sources: Sequence[VideoSource],
        classes: Sequence[str],
        *,
        size_px: int = DEFAULT_SIZE_PX,
        cache_dir: Path | str = Path("runs/cache"),
        augment: bool = False,
        stride: int = 1,
        frame_step: int = 1,
        flow_config: FlowConfig = FlowConfig(),
        device: str = "cpu",
        flow_batch_pairs: int = FLOW_BATCH_PAIRS,
        progress: bool = True,
        fps: float | None = None,
        crop: str = CROP_ROI,
    ) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop {crop!r} must be one of {', '.join(CROPS)}")
        if crop == CROP_MOUSE and fps is None:
            raise ValueError("crop='mouse' needs fps: the locator samples its background once a second of video")
        if size_px < 8:
            raise ValueError(f"size_px={size_px} is too small")
        if stride < 1 or frame_step < 1:
            raise ValueError("stride and frame_step must be >= 1")
        if fps is not None and not (fps > 0 and stride == 1):
            raise ValueError(f"fps={fps}, stride={stride}: resampling to the model rate needs fps > 0 and stride 1")
        if not sources:
            raise UserError("no videos to build a dataset from")
        self.sources = list(sources)
        self.classes = list(classes)
        self.size_px = int(size_px)
        self.cache_dir = Path(cache_dir)
        self.augment = bool(augment)
        self.stride = int(stride)
        self.frame_step = int(frame_step)
        self.flow_config = flow_config
        self.device = device
        self.flow_batch_pairs = int(flow_batch_pairs)
        self.progress = progress
        self.fps = None if fps is None else float(fps)  # model rate; None: every source frame, `stride` apart
        self.crop = crop
        self.decode_px = self.size_px * (DECODE_SCALE if crop == CROP_MOUSE else 1)  # side of the cached arena images and flow
        self.cache_dir.mkdir(parents=True, exist_ok=True)

        self._frames: list[np.ndarray] = []  # (N, S, S, 3) uint8 BGR per source (memory-mapped)
        self._flow: list[np.ndarray] = []  # (N, 2, S, S) uint8 flow codes per source
        self._labels: list[np.ndarray] = []  # (N,) int64 per source, in self.classes
        self._source_index: list[np.ndarray | None] = []  # (N,) source frame shown by each model-rate frame (fps set)
        self._tracks: list[np.ndarray] = []  # crop="mouse": (N, 2) float32 mouse (x, y) in the decode_px arena image per source
        self.cache_files: list[tuple[Path, Path]] = []
        self._build_caches()

        items = []
        for s, labels in enumerate(self._labels):
            frames = np.flatnonzero(labels >= 0)
            frames = frames[frames % self.frame_step == 0] if self.frame_step > 1 else frames
            items.append(np.stack([np.full(frames.size, s), frames, labels[frames]], axis=1))
        self.items = np.concatenate(items).astype(np.int64) if items else np.zeros((0, 3), np.int64)

    # -- cache building ----------------------------------------------------------------------

    def _paths(self, source: VideoSource, sha: str) -> tuple[Path, Path]:
        roi = source.roi
        roi_key = "full" if roi is None else f"{roi.x}_{roi.y}_{roi.w}_{roi.h}"
        rate = "" if self.fps is None else f"-at{self.fps:g}fps"  # model-rate frames: another cache
        stem = f"{source.video_path.stem}-{sha[:16]}-v{CACHE_FORMAT_VERSION}-roi{roi_key}-{self.decode_px}px{rate}"
        frames = self.cache_dir / f"{stem}.frames.npy"
        flow = self.cache_dir / f"{stem}-s{self.stride}-tvl1_{_flow_key(self.flow_config)}.flow.npy"
        return frames, flow

    def _build_caches(self) -> None:
        by_video: dict[Path, list[int]] = {}
        for i, src in enumerate(self.sources):
            if not src.video_path.exists():
                raise UserError(f"{src.video_path}: video not found")
            by_video.setdefault(src.video_path.resolve(), []).append(i)
        paths: list[tuple[Path, Path]] = [None] * len(self.sources)  # type: ignore[list-item]
        for video, idxs in by_video.items():
            sha = video_sha256(video)
            for i in idxs:
                paths[i] = self._paths(self.sources[i], sha)
            missing = [i for i in idxs if not paths[i][0].exists() or (self.fps is not None and not _ticks_path(paths[i][0]).exists())]
            if missing:
                decode = self._decode if self.fps is None else self._decode_resampled
                decode(video, [self.sources[i].roi for i in missing], [paths[i][0] for i in missing])
        self.cache_files = paths
        for i, src in enumerate(self.sources):
            frames_path, flow_path = paths[i]
            frames = np.load(frames_path, mmap_mode="r")
            if not flow_path.exists():
                self._compute_flow(np.asarray(frames), flow_path, src.name)
            self._frames.append(frames)
            self._flow.append(np.load(flow_path, mmap_mode="r"))
            if self.crop == CROP_MOUSE:
                self._tracks.append(self._track(frames, frames_path))
            if self.fps is None:
                self._source_index.append(None)
                self._labels.append(self._fit_labels(src, frames.shape[0]))
            else:  # each model-rate frame takes the label of the source frame it shows
                ticks = json.loads(_ticks_path(frames_path).read_text())
                shown = np.asarray(ticks["source_index"], dtype=np.int64)
                self._source_index.append(shown)
                self._labels.append(self._fit_labels(src, int(ticks["source_frames"]))[shown])

    def _decode(self, video: Path, rois: list[Roi | None], outputs: list[Path]) -> None:
        from tqdm import tqdm

        n, _, width, height = probe_video(video)
        for roi in rois:
            if roi is not None and not roi.fits(width, height):
                raise UserError(f"{video}: region of interest {roi} does not fit the {width}x{height} frame")
        crops: list[list[np.ndarray]] = [[] for _ in rois]
        cap = cv2.VideoCapture(str(video))
        with tqdm(total=n or None, desc=f"decode {video.name}", unit="frame", disable=None if self.progress else True,
                  leave=False) as bar:  # fmt: skip
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                for k, roi in enumerate(rois):
                    crops[k].append(crop_resize(frame, roi, self.decode_px))
                bar.update(1)
        cap.release()
        if not crops[0]:
            raise UserError(f"{video}: no frames could be decoded")
        for k, out in enumerate(outputs):
            _atomic_save(out, np.stack(crops[k]))
        log.info("%s: cached %d frames of %d arena(s) at %d px", video, len(crops[0]), len(rois), self.decode_px)

    def _decode_resampled(self, video: Path, rois: list[Roi | None], outputs: list[Path]) -> None:
        """Decode through the live capture (``stream.capture.Capture`` on the file, ``FrameResampler``
        at ``self.fps``): the model-rate frames are exactly those ``stream-run`` hands its ring.

        Also writes, per output, which source frame each model-rate frame shows (labels follow it).
        A jump in the timestamps (the live path would restart its clips there) is refused.
        """
        from tqdm import tqdm

        from stream.capture import Capture, CaptureConfig, EndOfStream, Gap, SourceSpec

        assert self.fps is not None
        capture = Capture(SourceSpec("file", str(video)), CaptureConfig(fps=self.fps, live=False))
        width, height = capture.open()
        for roi in rois:
            if roi is not None and not roi.fits(width, height):
                capture.release()
                raise UserError(f"{video}: region of interest {roi} does not fit the {width}x{height} frame")
        crops: list[list[np.ndarray]] = [[] for _ in rois]
        shown: list[int] = []
        capture.start()
        try:
            with tqdm(total=capture.stats.frame_count_estimate(self.fps) or None, desc=f"decode {video.name} at {self.fps:g} fps",
                      unit="frame", disable=None if self.progress else True, leave=False) as bar:  # fmt: skip
                for item in capture:
                    if item is None:
                        continue
                    if isinstance(item, Gap):
                        raise UserError(f"{video}: {item.seconds_missing:.1f} s without frames before model frame {item.first_index}; "
                                        "stream-run would restart its clips there. Cut the video at the gap or re-encode it")  # fmt: skip
                    if isinstance(item, EndOfStream):
                        if item.error:
                            raise UserError(f"{video}: {item.error}")
                        break
                    for k, roi in enumerate(rois):
                        crops[k].append(crop_resize(item.image, roi, self.decode_px))
                    shown.append(item.source_index)
                    bar.update(1)
        finally:
            capture.close()
        if not shown:
            raise UserError(f"{video}: no frames could be decoded")
        ticks = {"model_fps": self.fps, "source_fps": capture.stats.source_fps, "source_frames": capture.stats.source_frames,
                 "source_index": shown, "format_version": CACHE_FORMAT_VERSION}  # fmt: skip
        for k, out in enumerate(outputs):
            _atomic_save(out, np.stack(crops[k]))
            atomic_write(_ticks_path(out), json.dumps(ticks))
        log.info("%s: cached %d model-rate frames (%.2f fps from %d source frames at %.2f fps) of %d arena(s)",
                 video, len(shown), self.fps, capture.stats.source_frames, capture.stats.source_fps, len(rois))  # fmt: skip

    def _compute_flow(self, frames: np.ndarray, out: Path, name: str) -> None:
        """TV-L1 of every frame pair of one source into ``out``; the pairs are split over ``flow_devices(self.device)``."""
        from tqdm import tqdm

        n, s = frames.shape[0], self.decode_px
        grey = np.stack([to_grey(f) for f in frames])
        devices = flow_devices(self.device)
        with tqdm(total=max(n - self.stride, 0), desc=f"TV-L1 {name}", unit="pair", disable=None if self.progress else True,
                  leave=False) as bar:  # fmt: skip
            codes = flow_codes(grey, self.stride, self.flow_config, devices, batch_pairs=self.flow_batch_pairs, on_batch=bar.update)
        _atomic_save(out, codes)
        meta = {"flow_config": dataclasses.asdict(self.flow_config), "stride": self.stride, "size_px": s,
                "frames": n, "format_version": CACHE_FORMAT_VERSION}  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        log.info("%s: cached TV-L1 flow of %d frames on %s", name, n, ", ".join(devices))

    def _track(self, frames: np.ndarray, frames_path: Path) -> np.ndarray:
        """The mouse's position in every cached arena image (``stream.mouse_crop``), cached beside the frames."""
        path = frames_path.with_name(frames_path.name.replace(".frames.npy", f"-mouse{MOUSE_TRACK_VERSION}.track.npy"))
        if not path.exists():
            assert self.fps is not None
            _atomic_save(path, track_positions(frames, self.fps))
        return np.load(path)

    def mouse_window(self, source_index: int, frame: int) -> Window:
        """crop="mouse": the window (in the ``decode_px`` arena image) of the clip centred on ``frame``."""
        return crop_window(self._tracks[source_index][frame], self.decode_px, CROP_FRACTION)

    def _fit_labels(self, src: VideoSource, n: int) -> np.ndarray:
        ann = src.annotation
        if list(ann.classes) != self.classes:
            ann = ann.remap(self.classes)
        labels = ann.labels
        if labels.size > n:
            past = np.flatnonzero(labels[n:] >= 0)
            if past.size:
                raise AnnotationError(f"{ann.source}: frame {n + int(past[0])} is labelled but {src.video_path} "
                                      f"has only {n} frames")  # fmt: skip
            labels = labels[:n]
        elif labels.size < n:
            labels = np.concatenate([labels, np.full(n - labels.size, UNLABELLED, dtype=np.int64)])
        return labels.astype(np.int64)

    # -- access ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def labels(self) -> np.ndarray:
        return self.items[:, 2]

    def num_frames(self, source_index: int) -> int:
        return int(self._frames[source_index].shape[0])

    def source_labels(self, source_index: int) -> np.ndarray:
        """Per-frame labels of one source (in ``self.classes``, -1 = unlabelled); model-rate frames when ``fps`` is set."""
        return self._labels[source_index]

    def shown_source_frames(self, source_index: int) -> np.ndarray | None:
        """With ``fps``: the source frame each model-rate frame shows (None without resampling)."""
        return self._source_index[source_index]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes)).astype(np.int64)

    def sample_weights(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Inverse class frequency per item (of ``indices`` if given), normalised to mean 1."""
        labels = self.labels if indices is None else self.labels[np.asarray(indices)]
        counts = np.bincount(labels, minlength=len(self.classes)).astype(np.float64)
        w = 1.0 / np.maximum(counts[labels], 1.0)
        return w * (w.size / w.sum()) if w.size else w

    def make_sampler(
        self, indices: np.ndarray | None = None, num_samples: int | None = None, seed: int = 0
    ) -> WeightedRandomSampler:
        """Class-balanced sampler; with ``indices`` it yields positions within that subset."""
        w = self.sample_weights(indices)
        g = torch.Generator().manual_seed(seed)
        return WeightedRandomSampler(torch.as_tensor(w), num_samples or w.size, replacement=True, generator=g)

    def with_augment(self, augment: bool) -> "ClipDataset":
        """A view sharing items and caches, with augmentation switched on or off."""
        other = copy.copy(self)
        other.augment = bool(augment)
        return other

    def clip(self, source_index: int, center: int) -> tuple[np.ndarray, np.ndarray]:
        """Un-augmented (16,S,S,3) uint8 frames and (16,2,S,S) float32 flow in px for any frame."""
        n = self.num_frames(source_index)
        idx = clip_indices(center, n, self.stride)
        frames = np.asarray(self._frames[source_index][idx])
        flow = flow_from_uint8(np.asarray(self._flow[source_index][idx]))
        if self.crop == CROP_MOUSE:  # one window for the whole clip: a moving window would add its own motion
            w = self.mouse_window(source_index, center)
            frames, flow = np.ascontiguousarray(w.cut_frames(frames)), np.ascontiguousarray(w.cut(flow))
        repeated = np.concatenate([[False], idx[1:] == idx[:-1]])
        flow[repeated] = 0.0  # an edge-padding repeat did not move
        return frames, flow

    def window(self, source_index: int, start: int, stop: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive frames ``start .. stop - 1`` of one source as the model sees them, for training
        on whole stretches (``export.streaming_finetune``): RGB (3, T, S, S) in [-1, 1] and encoded
        flow (2, T, S, S), each frame's flow from the frame before (zero for the source's first).
        With ``rng``, the clips' training augmentation, drawn once for the whole window. With
        crop="mouse", one mouse window for the whole stretch, where the mouse is at its middle frame."""
        if not 0 <= start < stop <= self.num_frames(source_index):
            raise ValueError(f"window {start}..{stop} outside the {self.num_frames(source_index)} frames of source {source_index}")
        frames = np.asarray(self._frames[source_index][start:stop])
        flow = flow_from_uint8(np.asarray(self._flow[source_index][start:stop]))
        if self.crop == CROP_MOUSE:
            w = self.mouse_window(source_index, (start + stop - 1) // 2)
            frames, flow = np.ascontiguousarray(w.cut_frames(frames)), np.ascontiguousarray(w.cut(flow))
        if rng is None:
            return rgb_clip(frames), flow_input(flow)
        rgb_parts, flow_parts = [], []
        for i in range(0, stop - start, AUG_CHUNK_FRAMES):  # every chunk the same draws: one augmentation
            chunk_rng = copy.deepcopy(rng)
            r, f = _augment(frames[i : i + AUG_CHUNK_FRAMES], flow[i : i + AUG_CHUNK_FRAMES], chunk_rng)
            rgb_parts.append(r)
            flow_parts.append(f)
        rng.bit_generator.state = chunk_rng.bit_generator.state
        flow = np.concatenate(flow_parts)
        return np.concatenate(rgb_parts, axis=1), flow_input(flow)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, t, y = (int(v) for v in self.items[i])
        frames, flow = self.clip(s, t)
        if self.augment:
            rgb, flow = _augment(frames, flow, np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item())))
        else:
            rgb = rgb_clip(frames)
        return torch.from_numpy(rgb), torch.from_numpy(flow_input(flow)), torch.tensor(y, dtype=torch.int64)


def flow_input(flow: np.ndarray) -> np.ndarray:
    """Pixel flow (T, 2, S, S) as the model's flow stream takes it: encoded, (2, T, S, S), contiguous."""
    return np.ascontiguousarray(encode_flow(flow).transpose(1, 0, 2, 3))


def _augment(frames: np.ndarray, flow: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, crop and brightness on uint8 frames (T,S,S,3) and px flow (T,2,S,S).

    Returns RGB (3,T,S,S) in [-1,1] and px flow (T,2,S,S). Random draws come from torch's
    generator so that DataLoader workers and ``torch.manual_seed`` control them.
    """
    t, s = frames.shape[0], frames.shape[1]
    if rng.random() < AUG_FLIP_P:
        frames = frames[:, :, ::-1]
        flow = flow[..., ::-1].copy()
        flow[:, 0] *= -1.0  # mirrored image: horizontal motion changes sign
    margin = int(rng.integers(0, int(s * AUG_MAX_CROP_FRACTION) + 1))
    if margin > 0:
        c = s - margin
        y0, x0 = int(rng.integers(0, margin + 1)), int(rng.integers(0, margin + 1))
        stacked = np.ascontiguousarray(frames[:, y0 : y0 + c, x0 : x0 + c].transpose(1, 2, 0, 3).reshape(c, c, t * 3))
        frames = cv2.resize(stacked, (s, s), interpolation=cv2.INTER_LINEAR).reshape(s, s, t, 3).transpose(2, 0, 1, 3)
        fl = np.ascontiguousarray(flow[:, :, y0 : y0 + c, x0 : x0 + c].transpose(2, 3, 0, 1).reshape(c, c, t * 2))
        fl = cv2.resize(fl, (s, s), interpolation=cv2.INTER_LINEAR) * (s / c)  # displacement grows with zoom
        flow = fl.reshape(s, s, t, 2).transpose(2, 3, 0, 1)
    rgb = rgb_clip(np.ascontiguousarray(frames))
    gain = rng.uniform(*AUG_GAIN_RANGE)
    bias = rng.uniform(*AUG_BIAS_RANGE)
    rgb = np.clip(rgb * gain + bias, -1.0, 1.0).astype(np.float32)
    return rgb, np.ascontiguousarray(flow, dtype=np.float32)

