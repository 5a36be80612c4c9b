"""``python -m spermfuse.synthetic``: write a procedural data set or a preview."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .. import cli

log = logging.getLogger(__name__)
from .writer import KINDS, class_counts, generate, preview


def main(argv: list[str] | None = None) -> int:
    """``python -m spermfuse.synthetic``: write or preview a procedural data set; the exit status."""
    parser = cli.argument_parser(
        "Procedural microscopy data sets (sperm18, hushem4, blood4) as ImageFolder PNGs.",
        prog="python -m spermfuse.synthetic",
    )
    parser.add_argument("--kind", choices=sorted(KINDS), default="sperm18")
    parser.add_argument("--out", type=Path, help="folder to write (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--per-class", type=int, help="images per class (default: paper-shaped imbalance)")
    parser.add_argument("--scale", type=float, help="multiply the default class counts (sperm18 default 0.08)")
    parser.add_argument("--preview", type=Path, help="write a labelled grid of samples to this PNG")
    parser.add_argument(
        "--masks",
        action="store_true",
        help="sperm18: also write each image's part mask (0 background, 1 head, 2 neck, 3 tail)",
    )
    parser.add_argument(
        "--patients",
        type=int,
        help="assign each image to one of N patients with their own look (train with --group-pattern 'patient(\\d+)')",
    )
    args = parser.parse_args(argv)
    if args.out is None and args.preview is None:
        parser.error("give --out DIR and/or --preview FILE.png")
    if args.per_class is not None and args.per_class < 1:
        parser.error("--per-class must be >= 1")
    return cli.run(lambda: write_from_command_line(args))


def write_from_command_line(args: argparse.Namespace) -> None:
    """What the parsed flags ask for: a preview image, the data set, or both."""
    if args.preview:
        log.info("preview: %s", preview(args.kind, args.preview, seed=args.seed))
    if args.out:
        start = time.perf_counter()
        out = generate(
            args.out,
            args.kind,
            args.seed,
            args.per_class,
            args.scale,
            progress=_log_progress,
            patients=args.patients,
            masks=args.masks,
        )
        n = sum(class_counts(args.kind, args.per_class, args.scale).values())
        log.info("wrote %d %s images to %s in %.1f s", n, args.kind, out, time.perf_counter() - start)


def _log_progress(done: int, total: int) -> None:
    if done == total or done % 200 == 0:
        log.info("  %d/%d images", done, total)


if __name__ == "__main__":
    sys.exit(main())
