import numpy as np
import torch
from PIL import Image

from spermfuse.inference import Classifier, fused_probabilities
from spermfuse.metrics import softmax
from spermfuse.models import create_model
from spermfuse.transforms import build


class CountingPipeline:
    """The eval pipeline, counting the images it prepares."""

    def __init__(self, size: int) -> None:
        self.pipeline, self.calls = build(False, size), 0

    def __call__(self, image):
        self.calls += 1
        return self.pipeline(image)

    def __repr__(self) -> str:
        return repr(self.pipeline)


def test_fused_prediction_preprocesses_each_image_once_per_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        images.append(tmp_path / f"cell{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(images[-1])
    torch.manual_seed(0)
    shared = CountingPipeline(32)  # both models and both folds test at 32 px
    folds = [[Classifier(create_model(arch, 3).eval(), shared, ["a", "b", "c"], tmp_path) for arch in ("efficientnet_tiny", "resnetv2_tiny")] for _ in range(2)]
    for fold in folds:
        torch.nn.init.normal_(fold[1].model.fc.weight)
    probabilities = fused_probabilities(images, folds, [0.3, 0.7])
    assert shared.calls == len(images)
    with torch.no_grad():
        x = torch.stack([shared.pipeline(Image.open(p).convert("RGB")) for p in images])
        expected = np.mean([(0.3 * f[0].model(x) + 0.7 * f[1].model(x)).numpy() for f in folds], axis=0)
    assert np.allclose(probabilities, softmax(expected.astype(np.float64)), atol=1e-5)
