import numpy as np
import pytest
import torch
from PIL import Image

from spermfuse.core.checkpoints import safe_torch_load
from spermfuse.core.errors import ConfigError
from spermfuse.core.fused_model import Classifier, load_classifier
from spermfuse.core.metrics import softmax
from spermfuse.core.models import create_model
from spermfuse.core.transforms import Pipeline, PipelineSpec, from_spec
from spermfuse.deploy.inference import fused_probabilities
from spermfuse.training import trainer
from spermfuse.training.config import preset_config


def test_fused_prediction_preprocesses_each_image_once_per_pipeline(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        images.append(tmp_path / f"cell{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(images[-1])
    torch.manual_seed(0)
    calls = []
    prepare = Pipeline.scaled
    monkeypatch.setattr(Pipeline, "scaled", lambda self, image: calls.append(image) or prepare(self, image))
    shared = PipelineSpec(32)  # both models and both folds test at 32 px
    folds = [
        [
            Classifier(create_model(arch, 3).eval(), shared, ["a", "b", "c"], tmp_path)
            for arch in ("efficientnet_tiny", "resnetv2_tiny")
        ]
        for _ in range(2)
    ]
    for fold in folds:
        torch.nn.init.normal_(fold[1].model.fc.weight)
    probabilities = fused_probabilities(images, folds, [[0.3, 0.7], [0.3, 0.7]])
    assert len(calls) == len(images)
    with torch.no_grad():
        x = torch.stack([from_spec(shared)(Image.open(p).convert("RGB")) for p in images])
        expected = np.mean([(0.3 * f[0].model(x) + 0.7 * f[1].model(x)).numpy() for f in folds], axis=0)
    assert np.allclose(probabilities, softmax(expected.astype(np.float64)), atol=1e-5)


def test_a_method_b_checkpoint_records_its_preprocessing_and_prediction_repeats_it(tiny_sperm, tmp_path):
    config = preset_config(
        "paper_b",
        arch="efficientnet_tiny",
        data=str(tiny_sperm),
        out=str(tmp_path),
        img_size=32,
        workers=0,
        freeze_epochs=1,
        finetune_epochs=1,
        unfreeze_last=10,
    )
    best_path = trainer.train_fold(config) / "best.pt"
    recorded = PipelineSpec.from_dict(safe_torch_load(best_path)["pipeline"])
    assert recorded.preprocess == "otsu" and recorded.img_size == 32
    classifier = load_classifier(best_path)
    assert classifier.spec == recorded
    steps = repr(classifier.pipeline)
    order = [
        steps.index(step)
        for step in ("resize_longer_side(32)", "HybridOtsu", "pad_to_square(32, fill=(0, 0, 0))", "Normalize")
    ]
    assert order == sorted(order)  # the paper's order: resize, Otsu, then pad with the background

    best = safe_torch_load(best_path)
    best["pipeline"] = best["pipeline"] | {"version": 0}  # as another spermfuse version recorded it
    torch.save(best, tmp_path / "older.pt")
    with pytest.raises(ConfigError, match="preprocessing record is version 0"):
        load_classifier(tmp_path / "older.pt")


def test_prediction_repeats_the_test_time_augmentation_of_evaluation(tiny_sperm, tmp_path):
    from conftest import tiny_config

    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, tta="flip"))
    with np.load(run / "test_logits.npz", allow_pickle=False) as f:
        logits, paths = f["logits"], f["paths"]
    classifier = load_classifier(run / "best.pt")
    assert classifier.tta == "flip"
    probabilities = fused_probabilities([tiny_sperm / p for p in paths], [[classifier]], [[1.0]])
    assert np.allclose(probabilities, softmax(logits.astype(np.float64)), atol=1e-5)


def test_a_finished_run_resumed_with_flip_tta_rewrites_its_logits_with_it(tiny_sperm, tmp_path):
    from conftest import tiny_config

    from spermfuse.core.engine import tta_logits

    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1))
    plain = np.load(run / "test_logits.npz")["logits"]
    trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, tta="flip", resume=True))
    flipped = np.load(run / "test_logits.npz")["logits"]
    assert not np.allclose(plain, flipped) and safe_torch_load(run / "best.pt")["tta"] == "flip"
    model = load_classifier(run / "best.pt").model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1)) + model(x.flip(-2))) / 3
        assert torch.allclose(tta_logits(model, x, "flip"), expected, atol=1e-6)


def test_members_of_different_input_sizes_cannot_be_exported_as_one_graph(tmp_path):
    from spermfuse.deploy.export import ExportError, check_exportable

    pair = [
        Classifier(create_model(arch, 3).eval(), PipelineSpec(size), ["a", "b", "c"], tmp_path / arch)
        for arch, size in (("efficientnet_tiny", 32), ("resnetv2_tiny", 48))
    ]
    with pytest.raises(ExportError, match=r"different sizes \[32, 48\]"):
        check_exportable([pair])


def test_a_same_padding_run_records_it_and_prediction_rebuilds_the_same_network(tiny_sperm, tmp_path):
    from conftest import tiny_config

    from spermfuse.core.models.efficientnet import Conv2dSame

    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, arch="efficientnet_tiny", epochs=1, padding="same"))
    assert safe_torch_load(run / "best.pt")["padding"] == "same"
    classifier = load_classifier(run / "best.pt")
    assert any(isinstance(m, Conv2dSame) for m in classifier.model.modules())
    with np.load(run / "test_logits.npz", allow_pickle=False) as f:
        logits, paths = f["logits"], f["paths"]
    probabilities = fused_probabilities([tiny_sperm / p for p in paths], [[classifier]], [[1.0]])
    assert np.allclose(probabilities, softmax(logits.astype(np.float64)), atol=1e-5)
