"""The CPU demo's stand-in for ImageNet pretraining: each small backbone pretrained once, cached.

The paper never trains from scratch: it fine-tunes backbones pretrained on ImageNet. The
demo's small backbones have no such checkpoints, so each is first trained once on a
separate, larger procedural set, and the five folds then fine-tune from it
(``train.py --fold all --weights <checkpoint>``), as the paper fine-tunes.

The pretraining set is sperm18 rendered with another seed (``PretrainRecipe.seed``), with
``per_class`` images of every class. It holds none of the evaluated images: every image is
drawn from its own generator seeded by (seed, class, index), so another seed gives other
cells, and the folds use only the default set (seed 42). It is the same task from the same
generator, so it is a far closer start than ImageNet is for real micrographs: the demo's
gain from it overstates what ImageNet pretraining gives on real data. ``--kind hushem4``
pretrains on the procedural sperm heads instead (HuSHeM's four classes; docs/REAL_DATA.md
measures what each gives on real heads).

The checkpoint is cached under ``$SPERMFUSE_CACHE/demo-pretrain-<recipe>/<arch>/`` with a
record (``pretrain.json``: architecture, classes, recipe, SHA-256 of ``best.pt``) checked on
every use; a checkpoint that fails the check is trained again, and an interrupted
pretraining resumes from its ``last.pt`` (or starts again if that is unreadable).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import cli, synthetic
from ..cache import pretraining_root
from ..core.files import CheckpointError, atomic_write_json, file_sha256
from ..store.run_folder import BEST_CHECKPOINT, SINGLE_SPLIT_FOLDER
from ..synthetic.cached_sets import pretraining_data_dir
from .config import OPERATIONAL_SETTINGS, PRESETS, preset_config
from .trainer import train_fold

log = logging.getLogger(__name__)
BASE_PRESET = "demo_scratch"  # the pretraining's settings, with the recipe's on top


@dataclass(frozen=True)
class PretrainRecipe:
    """How the stand-in checkpoint is made; any change makes (and caches) a new one."""

    seed: int = 1042
    per_class: int = 250
    img_size: int = 64
    epochs: int = 16
    lr: float = 2e-3
    batch_size: int = 32
    kind: str = "sperm18"  # the procedural set: sperm18 (whole cells, 18 classes) or hushem4 (heads, 4 classes)

    def record(self) -> dict:
        """The recipe as recorded and fingerprinted; the default kind is left out, so the recipes
        made before it existed keep their checkpoints."""
        fields = asdict(self)
        if fields["kind"] == "sperm18":
            del fields["kind"]
        return fields

    def classes(self) -> list[str]:
        """The pretraining set's class names."""
        return list(synthetic.KINDS[self.kind][0])

    def fingerprint(self) -> str:
        """A short digest of everything that changes the pretrained weights: names their cache folder."""
        # What changes the weights; the preset's calibration share is not used here (cal_fraction=0 below).
        preset = {
            k: v for k, v in PRESETS[BASE_PRESET].items() if k not in OPERATIONAL_SETTINGS and k != "cal_fraction"
        }
        text = json.dumps({**self.record(), "generator": synthetic.GENERATOR_VERSION, "preset": preset}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def pretrain_root(recipe: PretrainRecipe) -> Path:
    """The cache folder of ``recipe``'s pretrained weights (named by its fingerprint)."""
    return pretraining_root(recipe.fingerprint())


def pretraining_data(recipe: PretrainRecipe) -> Path:
    """The pretraining set, generated once (atomically: an interrupted generation leaves nothing)."""
    folder = pretraining_data_dir(recipe.seed, recipe.per_class, recipe.kind)
    return synthetic.generate_once(folder, recipe.kind, seed=recipe.seed, per_class=recipe.per_class)


def _record_problem(folder: Path, arch: str, recipe: PretrainRecipe) -> str | None:
    """Why the recorded checkpoint of ``arch`` cannot be used; None when it can."""
    record_path, best = folder / "pretrain.json", folder / SINGLE_SPLIT_FOLDER / BEST_CHECKPOINT
    if not best.exists():
        return f"{best} is missing"
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return f"{record_path} is not readable JSON"
    if (
        record.get("arch") != arch
        or record.get("classes") != recipe.classes()
        or record.get("recipe") != recipe.record()
    ):
        return f"{record_path} records another architecture, class list or recipe"
    if record.get("sha256") != file_sha256(best):
        return f"{best}: its SHA-256 differs from the one recorded when it was made (a corrupt or replaced file)"
    return None


def pretrained_checkpoint(arch: str, recipe: PretrainRecipe = PretrainRecipe(), workers: int = 0) -> Path:
    """``best.pt`` of ``arch`` pretrained by ``recipe``: from the cache when its record checks out,
    else trained now (resuming an interrupted pretraining) and recorded."""
    folder = pretrain_root(recipe) / arch
    if (folder / "pretrain.json").exists():  # made before: use it if it checks out
        problem = _record_problem(folder, arch, recipe)
        if problem is None:
            log.info("pretrained %s: reusing %s", arch, folder / SINGLE_SPLIT_FOLDER / BEST_CHECKPOINT)
            return folder / SINGLE_SPLIT_FOLDER / BEST_CHECKPOINT
        log.warning("pretrained %s: %s; pretraining again", arch, problem)
        shutil.rmtree(folder)
    # No record: never pretrained, or a pretraining that was interrupted and now resumes.
    data = pretraining_data(recipe)
    config = preset_config(
        BASE_PRESET,
        arch=arch,
        early_stopping=recipe.epochs,
        data=str(data),
        out=str(pretrain_root(recipe)),
        split="holdout",
        val_fraction=0.1,
        test_fraction=0.05,
        cal_fraction=0.0,  # a stand-in for ImageNet weights: nothing of it is calibrated
        img_size=recipe.img_size,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        workers=workers,
        resume=True,
    )
    log.info("pretraining %s on %s (%d epochs, once; later runs reuse it)", arch, data, recipe.epochs)
    try:
        run = train_fold(config)
    except CheckpointError as error:  # an unreadable last.pt from a killed run: start again
        log.warning("pretrained %s: %s; starting again", arch, error)
        shutil.rmtree(folder)
        run = train_fold(config)
    best = run / BEST_CHECKPOINT
    atomic_write_json(
        folder / "pretrain.json",
        {"arch": arch, "classes": recipe.classes(), "recipe": recipe.record(), "sha256": file_sha256(best)},
    )
    return best


def main(argv: list[str] | None = None) -> int:
    """``python -m spermfuse.training.pretrain --arch NAME``: pretrain (or find) the checkpoint, print its path."""
    parser = cli.argument_parser(__doc__.split("\n\n")[0], prog="python -m spermfuse.training.pretrain")
    parser.add_argument("--arch", required=True, help="a registered model, e.g. efficientnet_tiny")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default 0: fastest on 2 cores)")
    parser.add_argument(
        "--kind", default="sperm18", choices=["sperm18", "hushem4"], help="the procedural set (default sperm18)"
    )
    parser.add_argument("--img-size", type=int, default=PretrainRecipe.img_size, help="input side in px (default 64)")
    parser.add_argument("--epochs", type=int, default=PretrainRecipe.epochs, help="epochs (default 16)")
    args = parser.parse_args(argv)
    recipe = PretrainRecipe(kind=args.kind, img_size=args.img_size, epochs=args.epochs)
    return cli.run(lambda: print(pretrained_checkpoint(args.arch, recipe, workers=args.workers)), timed=True)


if __name__ == "__main__":
    sys.exit(main())
