"""``python -m export.card_input_stats``: add the training input statistics to an existing model card.

Cards written before issue 24.12 have no ``input_stats``, so stream-run cannot tell a trial whose
footage is far from the training data. This recomputes them the way training does
(``export.train.training_input_stats`` on the dataset ``export-train`` would build from the same
videos, frame step, size and TV-L1 settings, taken from the card) and rewrites ``card.json``
atomically. The card's ``weights_sha256`` covers the weights only, so it stays valid::

    python -m export.card_input_stats --model trained_models/fst-top-64 --videos runs/regen-top/videos/train_*.mp4 \\
        --cache-dir runs/regen-top/cache

Size, frame rate, TV-L1 preset, view, classes and frame step default to the card's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export import train as tr
from stream.errors import cli_main
from stream.modelfile import CARD_FILE, load_card, write_model_text

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.card_input_stats", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model directory whose card.json gets the stats")
    tr.add_data_arguments(p)
    p.add_argument("--max-clips", type=int, default=tr.INPUT_STATS_CLIPS, help="clips sampled (default: %(default)s)")
    return p


@cli_main("card_input_stats")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if a.option_strings and any(o in (argv or sys.argv[1:]) for o in a.option_strings)}
    tr._data_defaults_from_card(args, args.model, {k: True for k in given})  # clips as the model saw them
    card = load_card(args.model)
    if "frame_step" not in given:  # the clips training drew (every Nth labelled frame)
        args.frame_step = int(card.training.get("frame_step", args.frame_step))
    classes, _ = tr.classes_from_args(args)
    ds, _ = tr.dataset_from_args(args, classes)
    card.input_stats = tr.training_input_stats(ds, max_clips=args.max_clips)
    card.validate(str(args.model / CARD_FILE))
    write_model_text(args.model / CARD_FILE, card.to_json())
    print(f"{args.model / CARD_FILE}: input_stats from {card.input_stats['clips']} clips: "
          + ", ".join(f"{k} {card.input_stats[k]['p01']:g}-{card.input_stats[k]['p99']:g}"
                      for k in ("brightness", "contrast", "flow_magnitude")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
