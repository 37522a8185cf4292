"""The motion rule on raw against texture TV-L1 flow, per held-out group (fst-side-64/REGENERATE.md, "Flow on texture").

Fits flow-magnitude thresholds by kappa on the training clips (as export-learning-curve's motion
points) and scores the held-out clips of a regenerate.sh render (``train_*.mp4``, ``test_<group>.mp4``),
once per texture sigma, printing the class medians that show what the flow measures::

    python tools/texture_flow_motion_check.py runs/tex/side/videos --sigmas 0,2,3 --view side
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from export.dataset import ClipDataset
from export.learning_curve import _motion_features, _sources
from export.motion_fit import fit_thresholds
from stream.engine.motion import MotionParams, classify
from stream.flow import FlowConfig

CLASSES = {"side": ["swim", "struggle", "float"], "top": ["mobile", "immobile"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("videos", type=Path, help="a regenerate.sh videos folder")
    p.add_argument("--sigmas", default="0,2", help="texture sigmas in px (default: 0,2)")
    p.add_argument("--view", choices=sorted(CLASSES), default="side")
    p.add_argument("--size-px", type=int, default=64)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/tex/cache"))
    args = p.parse_args()
    classes = CLASSES[args.view]
    train, tests = sorted(args.videos.glob("train_*.mp4")), sorted(args.videos.glob("test_*.mp4"))
    labels = lambda vs: [v.parent / f"{v.stem}.labels.csv" for v in vs]  # noqa: E731
    for sigma in (float(s) for s in args.sigmas.split(",")):
        cfg = FlowConfig.fast(texture_sigma=sigma)

        def dataset(videos: list[Path], step: int) -> ClipDataset:
            return ClipDataset(_sources(videos, labels(videos), classes), classes, size_px=args.size_px, cache_dir=args.cache_dir,
                               frame_step=step, flow_config=cfg, progress=False, fps=15.0)  # fmt: skip

        tr, te = dataset(train, 10), dataset(tests, 30)
        (xtr, ytr), (xte, yte) = _motion_features(tr), _motion_features(te)
        order, thresholds, kappa = fit_thresholds(xtr, ytr, classes)
        pred = classify(xte, MotionParams(classes_low_to_high=tuple(order), thresholds_px=tuple(thresholds), min_bout_s=0.0), classes)
        names = [s.video_path.stem.removeprefix("test_") for s in te.sources]
        accuracy = {}
        print(f"texture sigma {sigma:g} px: order {order}, thresholds {np.round(thresholds, 3).tolist()}, fit kappa {kappa:.3f}; training medians "
              + " ".join(f"{c}={np.median(xtr[ytr == i]):.3f}" for i, c in enumerate(classes)))  # fmt: skip
        for g in sorted(set(names)):
            m = np.isin(te.items[:, 0], [i for i, n in enumerate(names) if n == g])
            accuracy[g] = float((pred[m] == yte[m]).mean())
            medians = " ".join(f"{c}={np.median(xte[m & (yte == i)]):.3f}" for i, c in enumerate(classes) if (m & (yte == i)).any())
            print(f"  {g:28s} accuracy {accuracy[g]:.3f}  medians {medians}")
        a = np.array(list(accuracy.values()))
        print(f"  held-out mean {a.mean():.3f} +- {a.std():.3f}, worst {a.min():.3f} ({min(accuracy, key=accuracy.get)})")


if __name__ == "__main__":
    main()
