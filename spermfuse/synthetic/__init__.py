"""Procedural microscopy data sets, the embedded default when no real data is at hand.

- ``sperm18``: single-sperm crops in the 18 Hi-LabSpermMorpho classes, rendered like a
  Diff-Quik-stained bright-field image (beige background, purple head with a paler
  acrosome cap, midpiece, thin wavy tail). Each abnormal class changes what an
  embryologist looks at; neighbouring classes overlap in their parameters so the
  subtle classes stay hard.
- ``hushem4``: 131x131 sperm-head images, classes Normal, Tapered, Pyriform, Amorphous.
- ``blood4``: peripheral-blood-smear-like images (erythrocytes and one stained
  lymphoid cell) in the four ALL classes of method B.

Images are written as ImageFolder PNGs plus ``metadata.csv`` with every image's
generating parameters. Same seed, same files, byte for byte: each image draws from
its own generator seeded by (seed, class, index).

With ``patients=N`` every image also belongs to one of N synthetic patients (its file name
ends in ``_patient<id>``, and ``metadata.csv`` has a ``patient`` column). A patient has its
own look (stain cast, background brightness, optics blur) and a skewed mix of classes, as
the slides of one real patient do: a network can learn the look as a shortcut, which only
patient-disjoint folds expose. Without ``patients`` the files are byte-identical to before.

With ``masks=True`` (sperm18) every image also gets a part mask, the ground truth of where
each defect is: ``metadata.csv``'s ``mask`` column names it.

One module per data set (``sperm18``, ``hushem4``, ``blood4``), their shared ``drawing``
helpers, the ``writer`` (files, cache, preview) and the command line (``__main__``):
``python -m spermfuse.synthetic --kind sperm18 --out DIR [--per-class N] [--patients N] [--masks]``.
"""

from ..data.taxonomy import DEFECT_PART, MASK_FOLDER, MORPHOLOGY_GROUP, PART_VALUES, SPERM18_CLASSES
from .blood4 import BLOOD4_CLASSES
from .hushem4 import HUSHEM4_CLASSES
from .writer import (
    GENERATOR_VERSION,
    KINDS,
    MIN_PER_CLASS,
    class_counts,
    generate,
    generate_once,
    patient_looks,
    preview,
    render,
    render_with_mask,
)

__all__ = [
    "BLOOD4_CLASSES",
    "DEFECT_PART",
    "GENERATOR_VERSION",
    "HUSHEM4_CLASSES",
    "KINDS",
    "MASK_FOLDER",
    "MIN_PER_CLASS",
    "MORPHOLOGY_GROUP",
    "PART_VALUES",
    "SPERM18_CLASSES",
    "class_counts",
    "generate",
    "generate_once",
    "patient_looks",
    "preview",
    "render",
    "render_with_mask",
]
