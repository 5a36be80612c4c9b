"""The exported fused pair at the paper's size computes what fuse.py --predict computes."""

import numpy as np
import pytest
import torch
from PIL import Image

from spermfuse.core.fused_model import Classifier, FusedModel
from spermfuse.core.models import create_model
from spermfuse.core.transforms import PipelineSpec
from spermfuse.deploy.export import export_onnx, export_program, onnx_available
from spermfuse.deploy.inference import fused_probabilities


def test_the_papers_pair_at_240_pixels_exports_to_the_same_probabilities(tmp_path):
    torch.manual_seed(0)
    classes = [f"class{c}" for c in range(18)]
    pair = [
        Classifier(create_model(name, 18).eval(), PipelineSpec(240), classes, tmp_path / name)
        for name in ("efficientnetv2_s", "resnet50v2")
    ]
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate(((300, 200), (120, 160))):  # one shrunk, one enlarged; both letterboxed
        images.append(tmp_path / f"cell{i}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images[-1])
    expected = fused_probabilities(images, [pair], [[0.6, 0.4]])  # the path of fuse.py --predict
    module = FusedModel([pair], [[0.6, 0.4]])
    (tmp_path / "model.pt2").write_bytes(export_program(module, 240))
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    batch = torch.stack(
        [
            torch.from_numpy(np.asarray(pair[0].pipeline.geometry(Image.open(p).convert("RGB"), rng)).copy()).permute(
                2, 0, 1
            )
            for p in images
        ]
    )
    with torch.no_grad():
        assert np.abs(program(batch).numpy() - expected).max() <= 1e-5
    if not onnx_available():
        pytest.skip("the ONNX extra is not installed")
    onnxruntime = pytest.importorskip("onnxruntime")
    export_onnx(module, 240, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    assert np.abs(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0] - expected).max() <= 1e-5


def test_a_method_b_model_exports_with_otsu_before_the_graph_as_model_json_says(tmp_path):
    from conftest import draw_cell

    from spermfuse.core.segmentation import HybridOtsu, hybrid_otsu
    from spermfuse.core.transforms import pad_to_square, resize_longer_side
    from spermfuse.deploy.export import describe

    torch.manual_seed(0)
    model = Classifier(
        create_model("efficientnet_tiny", 3).eval(),
        PipelineSpec(64, preprocess="otsu"),
        ["a", "b", "c"],
        tmp_path / "b4",
    )
    images = []
    for i, size in enumerate(((150, 90), (70, 80))):
        images.append(tmp_path / f"smear{i}.png")
        draw_cell(size, radius=20, seed=i).save(images[-1])
    expected = fused_probabilities(images, [[model]], [[1.0]])
    spec = describe([[model]], ["b4"], [1], [[1.0]])
    assert spec["preprocessing"]["steps"] == ["resize_longer_side", repr(HybridOtsu()), "pad_to_square"] and spec[
        "preprocessing"
    ]["fill"] == [0, 0, 0]
    size, fill = spec["input"]["size"], tuple(spec["preprocessing"]["fill"])
    prepared = [
        pad_to_square(hybrid_otsu(resize_longer_side(Image.open(p).convert("RGB"), size)), size, fill) for p in images
    ]  # the JSON's steps, in order
    batch = torch.stack([torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in prepared])
    (tmp_path / "model.pt2").write_bytes(export_program(FusedModel([[model]], [[1.0]]), size))
    with torch.no_grad():
        assert np.abs(torch.export.load(str(tmp_path / "model.pt2")).module()(batch).numpy() - expected).max() <= 1e-5
