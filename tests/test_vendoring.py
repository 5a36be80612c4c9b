"""spermfuse/core/ copied alone into another codebase, under another name, works (docs/VENDORING.md)."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "spermfuse" / "core"

# Run in a fresh interpreter whose path holds only the copy: any import of spermfuse fails loudly.
USES = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    from pathlib import Path

    class NoSpermfuse:
        def find_spec(self, name, path=None, target=None):
            if name == "spermfuse" or name.startswith("spermfuse."):
                raise ImportError(f"the copy imported {name}")

    sys.meta_path.insert(0, NoSpermfuse())
    import labcore

    for module in pkgutil.walk_packages(labcore.__path__, "labcore."):
        importlib.import_module(module.name)

    import numpy as np
    import torch
    from labcore.calibration import fit_temperature, probabilities_of
    from labcore.conformal import calibrate_sets, predict_sets
    from labcore.engine import CountNormalizedCrossEntropy, train_one_epoch
    from labcore.fusion import fuse, grid_search
    from labcore.logits import load_logits, save_logits
    from labcore.metrics import summarize
    from labcore.models import create_model
    from labcore.selective import certify_threshold

    # Backbones: build both of method A, save one, load it back with weights=.
    torch.manual_seed(0)
    resnet = create_model("resnet50v2", 18).eval()
    torch.save(resnet.state_dict(), "resnet.pt")
    again = create_model("resnet50v2", 18, weights="resnet.pt").eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(resnet(image), again(image))
    assert create_model("efficientnetv2_s", 18)(torch.rand(2, 3, 64, 64)).shape == (2, 18)

    # The hand-written AMP loop: one epoch with a GradScaler, then the plateau scheduler.
    model = create_model("resnetv2_tiny", 3)
    loader = [(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), None) for _ in range(3)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    criterion = CountNormalizedCrossEntropy(torch.ones(3))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    result = train_one_epoch(model, loader, criterion, optimizer, scaler, torch.device("cpu"))
    assert result.images == 12 and np.isfinite(result.loss)
    scheduler.step(result.loss)

    # Fusion and metrics on saved logits: two members, two folds.
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    per_fold = []
    for fold in (1, 2):
        labels = rng.integers(0, 3, 60)
        paths = [f"img{fold}_{i}.png" for i in range(60)]
        for member in ("m1", "m2"):
            logits = np.eye(3)[labels] * rng.uniform(0.5, 3) + rng.normal(0, 1, (60, 3))
            save_logits(Path(f"{member}_{fold}.npz"), logits, labels, paths, classes, member, fold)
        per_fold.append([load_logits(f"{member}_{fold}.npz") for member in ("m1", "m2")])
    grid = grid_search(per_fold, [0.0, 0.5, 1.0])
    fused = fuse([s.logits for s in per_fold[0]], grid.best)
    assert summarize(per_fold[0][0].labels, fused, classes)["accuracy"] > 0.4

    # A temperature, a referral certificate and conformal sets.
    labels = per_fold[1][0].labels
    temperature = fit_temperature(per_fold[1][0].logits, labels)
    probabilities = probabilities_of(per_fold[1][0].logits, temperature)
    certificate = certify_threshold(probabilities.max(1), probabilities.argmax(1) == labels, 0.6, 0.1)
    sets = predict_sets(probabilities, calibrate_sets(probabilities, labels, alpha=0.2))
    assert certificate.threshold <= 1 and sets.shape == (60, 3)
    assert not [name for name in sys.modules if name.startswith("spermfuse")]
    print("vendored core: ok")
    """
)


def test_core_copied_alone_under_another_name_runs_every_use(tmp_path):
    shutil.copytree(CORE, tmp_path / "labcore", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-s", "-c", USES], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "vendored core: ok" in result.stdout, result.stderr[-3000:]


def test_core_names_no_spermfuse_variable_or_command():
    """A vendored copy must not read spermfuse's environment or tell its user to run spermfuse's scripts."""
    mentions = [
        f"{path.relative_to(CORE)}:{number}"
        for path in CORE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "SPERMFUSE_" in line or "python train.py" in line or "python fuse.py" in line
    ]
    assert mentions == []
