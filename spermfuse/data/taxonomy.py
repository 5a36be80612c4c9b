"""The sperm18 taxonomy: Hi-LabSpermMorpho's 18 classes and the part of the cell each defect
is in (head, neck, tail; Normal has none).

One owner for the classes' meaning: the renderer draws them, the pointing game asks an
explanation to point at the defect's part, and the per-sample report groups by it.
"""

SPERM18_CLASSES = [
    "AmorfHead",
    "AsymmetricNeck",
    "CurlyTail",
    "DoubleHead",
    "DoubleTail",
    "LongTail",
    "NarrowAcrosome",
    "Normal",
    "PinHead",
    "PyriformHead",
    "RounHead",
    "ShortTail",
    "TaperedHead",
    "ThickNeck",
    "ThinNeck",
    "TwistedNeck",
    "TwistedTail",
    "VacuolatedHead",
]

PART_VALUES = {"background": 0, "head": 1, "neck": 2, "tail": 3}
MASK_FOLDER = ".masks"
# The part that carries each class's defect: where an explanation should point. A Normal
# sperm has no defect; the whole cell (any part, not the background) is its answer.
DEFECT_PART = {
    **dict.fromkeys(
        [
            "AmorfHead",
            "DoubleHead",
            "NarrowAcrosome",
            "PinHead",
            "PyriformHead",
            "RounHead",
            "TaperedHead",
            "VacuolatedHead",
        ],
        "head",
    ),
    **dict.fromkeys(["AsymmetricNeck", "ThickNeck", "ThinNeck", "TwistedNeck"], "neck"),
    **dict.fromkeys(["CurlyTail", "DoubleTail", "LongTail", "ShortTail", "TwistedTail"], "tail"),
    "Normal": "sperm",
}
# The per-sample report's groups (sample_report.py): the defect part, and normal forms on their own.
MORPHOLOGY_GROUP = {label: "normal" if part == "sperm" else part for label, part in DEFECT_PART.items()}
