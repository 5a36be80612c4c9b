"""Grad-CAM, occlusion and the pointing game: the definitions on hand-computable models."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from spermfuse.benchmarks.fused_pair import FusedPair
from spermfuse.core.errors import ConfigError
from spermfuse.core.models import REGISTRY, create_model
from spermfuse.core.transforms import PipelineSpec, build
from spermfuse.explain.gradcam import (
    Member,
    fused_grad_cam,
    fused_pair_members,
    grad_cam,
    occlusion,
    peak,
    scale_to_unit,
    to_original_geometry,
)
from spermfuse.explain.sanity_check import rank_correlation


class TwoChannels(nn.Module):
    """A = (x, -x) through a 1x1 convolution, mean pool, linear W: logits = W @ mean(A)."""

    def __init__(self, weight) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor(weight))

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_grad_cam_is_relu_of_the_gradient_weighted_channels_scaled_to_unit():
    model = TwoChannels([[2.0, 1.0], [0.0, 3.0]])
    x = torch.tensor([[-2.0, -1.0, 0.0, 1.0], [2.0, 3.0, 4.0, -4.0], [0.5, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])[
        None, None
    ]
    # class 0: alpha = (2, 1) / 16, map = ReLU(2x - x) / 16 = ReLU(x) / 16 -> scaled: ReLU(x) / 4
    assert torch.allclose(grad_cam(model, x, target=0, layer="conv")[0], x[0, 0].clamp_min(0) / 4)
    # class 1: alpha = (0, 3) / 16, map = ReLU(-3x) / 16 -> scaled: ReLU(-x) / 4
    assert torch.allclose(grad_cam(model, x, target=1, layer="conv")[0], (-x[0, 0]).clamp_min(0) / 4)


def test_a_map_with_no_positive_evidence_stays_zero():
    model = TwoChannels([[2.0, 1.0], [0.0, 3.0]])
    assert torch.equal(grad_cam(model, -torch.ones(1, 1, 4, 4), target=0, layer="conv"), torch.zeros(1, 4, 4))


def test_no_target_explains_the_predicted_class_and_a_tensor_gives_one_per_image():
    model = TwoChannels([[2.0, 1.0], [0.0, 3.0]])
    x = torch.stack([torch.ones(1, 4, 4), -torch.ones(1, 4, 4)]) * torch.linspace(0.1, 1, 16).view(1, 1, 4, 4)
    predicted = model(x).argmax(1)
    assert predicted.tolist() == [0, 1]
    assert torch.equal(grad_cam(model, x, layer="conv"), grad_cam(model, x, target=predicted, layer="conv"))
    assert torch.equal(
        grad_cam(model, x, target=torch.tensor([1, 0]), layer="conv")[0],
        grad_cam(model, x[:1], target=1, layer="conv")[0],
    )


def test_the_model_is_left_as_it_was_found():
    model = create_model("efficientnet_tiny", 4).train()
    model.features[0].eval()  # a frozen stem, as method B's first stage has
    for parameter in model.features[1].parameters():
        parameter.requires_grad = False
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grad_cam(model, torch.randn(2, 3, 32, 32))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated
    assert all(not m._forward_hooks for m in model.modules())


def test_a_fully_frozen_model_can_still_be_explained():
    model = create_model("resnetv2_tiny", 3).eval()
    nn.init.normal_(model.fc.weight)
    for parameter in model.parameters():
        parameter.requires_grad = False
    maps = grad_cam(model, torch.randn(1, 3, 96, 96))  # 3x3 at the last stage: a map with a peak
    assert maps.shape == (1, 96, 96) and maps.max() == 1.0


def test_fused_maps_follow_the_members_weights():
    torch.manual_seed(0)
    first, second = create_model("efficientnet_tiny", 4).eval(), create_model("resnetv2_tiny", 4).eval()
    nn.init.normal_(second.fc.weight)
    x = torch.randn(2, 3, 32, 32)
    only_first = fused_grad_cam([Member("e", first, 1.0), Member("r", second, 0.0)], [x, x], target=1)
    assert torch.allclose(only_first.fused, grad_cam(first, x, target=1), atol=1e-6)
    assert torch.equal(only_first.members["r"], torch.zeros(2, 32, 32))  # weight 0: no evidence
    pair = FusedPair(first, second, alpha=0.3)
    both = fused_grad_cam(fused_pair_members(pair, "e", "r"), [x, x])
    assert torch.equal(both.target, pair(x).argmax(1))
    assert torch.allclose(both.probability, pair(x).softmax(1).max(1).values, atol=1e-6)
    # A member's map under the fused logit is its own map for that class: the weight only scales it.
    assert torch.allclose(scale_to_unit(both.members["e"]), grad_cam(first, x, target=both.target), atol=1e-5)
    assert not torch.allclose(both.fused, scale_to_unit(both.members["e"]), atol=1e-3)


def test_member_maps_share_the_fused_maps_scale_so_a_members_weight_shows():
    torch.manual_seed(0)
    first, second = create_model("efficientnet_tiny", 4).eval(), create_model("resnetv2_tiny", 4).eval()
    nn.init.normal_(second.fc.weight)
    x = torch.randn(1, 3, 32, 32)

    def peaks(weight_of_second):
        members = [Member("e", first, 0.2), Member("r", second, weight_of_second)]
        explanation = fused_grad_cam(members, [x, x], target=2)
        return explanation.members["e"].max(), explanation.members["r"].max()

    e_low, r_low = peaks(0.4)
    e_high, r_high = peaks(0.8)
    assert (r_high / e_high) / (r_low / e_low) == pytest.approx(2.0, rel=1e-4)  # twice the weight, twice as hot


def test_folds_of_one_backbone_are_summed_into_one_member_map():
    torch.manual_seed(0)
    folds = [create_model("efficientnet_tiny", 4).eval() for _ in range(2)]
    x = torch.randn(1, 3, 32, 32)
    explanation = fused_grad_cam([Member("effnet", model, 0.5) for model in folds], [x, x])
    assert list(explanation.members) == ["effnet"]
    assert torch.allclose(scale_to_unit(explanation.members["effnet"]), explanation.fused, atol=1e-6)


class Brightness(nn.Module):
    """logit 0 = 10 x mean brightness of a 1x1 feature map (so Grad-CAM = brightness); logit 1 = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.features.weight, 1.0)

    def forward(self, x):
        score = 10 * self.features(x).mean(dim=(2, 3))
        return torch.cat([score, torch.zeros_like(score)], 1)


def test_a_map_of_an_off_centre_object_in_a_non_square_image_lands_on_it_in_the_original_geometry():
    pixels = np.zeros((30, 90, 3), dtype=np.uint8)  # wide: the letterbox pads above and below
    pixels[5:15, 65:80] = 255  # a bright object in the upper right
    pipeline = build(False, 48, pad_color=(0, 0, 0), mean=(0, 0, 0), std=(1, 1, 1))
    x = pipeline(Image.fromarray(pixels))[None]
    maps = to_original_geometry(grad_cam(Brightness(), x, target=0, layer="features"), 90, 30)
    assert maps.shape == (1, 30, 90)
    row, column = peak(maps)[0].tolist()
    assert 5 <= row < 15 and 65 <= column < 80
    occluded = to_original_geometry(occlusion(Brightness(), x, torch.zeros(3), target=0, patch=8, stride=4), 90, 30)
    row, column = peak(occluded)[0].tolist()
    assert 2 <= row < 18 and 60 <= column < 85  # within a patch of the object


def test_bad_layer_and_target_are_one_clear_error():
    model = create_model("efficientnet_tiny", 4)
    with pytest.raises(ConfigError, match="layer 'stages.9': no such module in EfficientNet"):
        grad_cam(model, torch.randn(1, 3, 32, 32), layer="stages.9")
    with pytest.raises(ConfigError, match=r"target \[7\]: out of range; the model has classes 0..3"):
        grad_cam(model, torch.randn(1, 3, 32, 32), target=7)


def test_maps_depend_on_the_model_reinitialising_the_last_stage_changes_them():
    torch.manual_seed(0)
    model = create_model("efficientnet_tiny", 4).eval()
    x = torch.randn(4, 3, 64, 64)
    before = grad_cam(model, x, target=0)
    for module in model.features[-1].modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    after = grad_cam(model, x, target=0)
    correlation = np.mean([rank_correlation(a.numpy(), b.numpy()) for a, b in zip(before, after)])
    assert correlation < 0.5


def test_the_layer_size_is_the_map_grad_cam_reads():
    from spermfuse.explain.gradcam import layer_size

    assert layer_size(create_model("efficientnet_tiny", 3), 64) == (4, 4)
    assert layer_size(create_model("resnetv2_tiny", 3), 64) == (2, 2)


def test_explained_files_take_a_target_class_per_file(tmp_path):
    from spermfuse.core.fused_model import Classifier
    from spermfuse.explain.gradcam import explain_files

    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    torch.manual_seed(0)
    spec = PipelineSpec(32)
    members = [[Classifier(create_model("efficientnet_tiny", 3), spec, ["x", "y", "z"], tmp_path / "e.pt")]]
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    explained = list(explain_files(paths, members, [[1.0]], ["e"], targets=[2, 0]))
    assert [e.predicted for e in explained] == [2, 0]
    again = list(explain_files(paths, members, [[1.0]], ["e"], targets=[1, 1]))
    assert not torch.allclose(explained[0].fused, again[0].fused)  # another class, another map


def test_explaining_members_trained_on_other_classes_is_refused_naming_the_checkpoint(tmp_path):
    from spermfuse.core.errors import DataError
    from spermfuse.core.fused_model import Classifier
    from spermfuse.explain.gradcam import explain_files

    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "cell.png")
    spec = PipelineSpec(32)
    members = [
        [
            Classifier(create_model("efficientnet_tiny", 3), spec, ["a", "b", "c"], tmp_path / "e.pt"),
            Classifier(create_model("resnetv2_tiny", 3), spec, ["a", "b", "x"], tmp_path / "r.pt"),
        ]
    ]
    with pytest.raises(DataError, match="r.pt: classes differ from .*e.pt"):
        list(explain_files([tmp_path / "cell.png"], members, [[0.5, 0.5]], ["e", "r"]))


def test_grad_cam_takes_a_class_name_with_the_class_list():
    from spermfuse.core.models import create_model
    from spermfuse.explain.gradcam import grad_cam

    model = create_model("efficientnet_tiny", 3).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    by_name = grad_cam(model, images, "B", classes=["A", "B", "C"])
    assert torch.equal(by_name, grad_cam(model, images, 1))
    with pytest.raises(ValueError, match="give classes="):
        grad_cam(model, images, "B")


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_grad_cam_applies_the_relu_at_the_layers_resolution_then_upsamples(arch):
    """Selvaraju et al.'s definition, computed here by hand with hooks on the same layer, for
    every registered architecture."""
    import torch.nn.functional as F

    from spermfuse.explain.gradcam import default_layer, grad_cam, scale_to_unit

    torch.manual_seed(0)
    model = create_model(arch, 3).eval()
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    nn.init.normal_(head.weight, std=0.1)  # BiT zero-initialises its head: give the gradients values
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    store = {}
    handle = default_layer(model).register_forward_hook(lambda m, i, out: store.__setitem__("a", out))
    logits = model(images.requires_grad_(True))
    handle.remove()
    target = logits.argmax(1)
    gradient = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store["a"])[0]
    weighted = (gradient.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True).detach()
    expected = scale_to_unit(F.interpolate(torch.relu(weighted), size=(64, 64), mode="bilinear")[:, 0])
    assert torch.allclose(grad_cam(model, images.detach()), expected, atol=1e-5)


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_the_default_layer_map_sums_to_the_explained_logit_minus_its_bias(arch):
    """features -> pool -> linear for both backbones: the unrectified Grad-CAM map's spatial sum is
    z_c - b_c, so a fused map adds maps of one scale (not so before the ResNetV2's last GroupNorm)."""
    from spermfuse.core.models import create_model
    from spermfuse.explain.gradcam import default_layer

    torch.manual_seed(0)
    model = create_model(arch, 4).eval()
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    nn.init.normal_(head.weight)
    nn.init.normal_(head.bias)
    store = {}
    handle = default_layer(model).register_forward_hook(lambda m, i, out: store.__setitem__("a", out))
    logits = model(torch.rand(2, 3, 64, 64, requires_grad=True))
    handle.remove()
    gradient = torch.autograd.grad(logits[:, 2].sum(), store["a"])[0]
    linear = (gradient.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(dim=(1, 2, 3))
    assert torch.allclose(linear, logits[:, 2] - head.bias[2], atol=1e-4)


def test_the_part_switch_explains_the_likeliest_class_of_another_part():
    from spermfuse.reporting.explain_runs import TestImage, counterfactual_class
    from spermfuse.synthetic import SPERM18_CLASSES

    probabilities = np.full(18, 0.01)
    probabilities[SPERM18_CLASSES.index("ShortTail")] = 0.2
    probabilities[SPERM18_CLASSES.index("PinHead")] = 0.3
    of = lambda name: TestImage("x.png", SPERM18_CLASSES.index(name), 1, 0, 0.3, probabilities)  # noqa: E731
    assert counterfactual_class(of("TaperedHead"), SPERM18_CLASSES) == (SPERM18_CLASSES.index("ShortTail"), "tail")
    assert counterfactual_class(of("ThinNeck"), SPERM18_CLASSES) == (SPERM18_CLASSES.index("ShortTail"), "tail")
    assert counterfactual_class(of("CurlyTail"), SPERM18_CLASSES) == (SPERM18_CLASSES.index("PinHead"), "head")
    assert counterfactual_class(of("Normal"), SPERM18_CLASSES) is None


def test_the_overlay_blends_the_colormap_over_the_image():
    from matplotlib import colormaps

    from spermfuse.reporting.figures import overlay

    image = np.full((4, 6, 3), 200, dtype=np.uint8)
    heat = np.zeros((4, 6))
    heat[1, 2] = 2.0
    blended = overlay(image, heat, alpha=0.5, vmax=2.0)
    top = np.round(np.array(colormaps["viridis"](1.0)[:3]) * 255)
    bottom = np.round(np.array(colormaps["viridis"](0.0)[:3]) * 255)
    assert blended.dtype == np.uint8 and blended.shape == (4, 6, 3)
    assert np.abs(blended[1, 2].astype(float) - (100 + top / 2)).max() <= 1
    assert np.abs(blended[0, 0].astype(float) - (100 + bottom / 2)).max() <= 1
    with pytest.raises(ValueError, match="one geometry"):
        overlay(image, np.zeros((5, 6)))


def test_a_cell_is_scored_by_its_true_parts_map_and_the_switched_map_by_the_other_part(tmp_path):
    from spermfuse.reporting.explain_runs import TestImage, pointing_case
    from spermfuse.synthetic import PART_VALUES, SPERM18_CLASSES

    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:10, 5:10] = PART_VALUES["head"]
    mask[30:35, 30:35] = PART_VALUES["tail"]
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(tmp_path / "cell.png")
    on_head, on_tail = np.zeros((40, 40)), np.zeros((40, 40))
    on_head[7, 7], on_tail[32, 32] = 1.0, 1.0
    label = SPERM18_CLASSES.index("TaperedHead")
    image = TestImage("cell.png", label, 1, label, 0.9, np.full(18, 1 / 18))
    setting = {"input_size": 40, "map_size": 40}  # a stride of one pixel: a tolerance of half a pixel
    switch = (SPERM18_CLASSES.index("ShortTail"), "tail")
    case = pointing_case(
        tmp_path / "cell.png", mask, image, SPERM18_CLASSES, setting, (on_head, on_tail, on_tail), switch
    )
    assert case.hit and not case.untrained and case.part_switch and case.correct and case.radius == 0.5
    missed = pointing_case(
        tmp_path / "cell.png", mask, image, SPERM18_CLASSES, setting, (on_tail, on_head, on_head), switch
    )
    assert not missed.hit and missed.untrained and not missed.part_switch


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_grad_cam_equals_pytorch_grad_cam_on_the_same_layer_and_targets(arch):
    """The reference implementation (requirements-dev: grad-cam) scales before it resizes, this one
    after; the maps agree to the issue's tolerance (correlation > 0.995, max difference < 0.05)."""
    reference = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from spermfuse.explain.gradcam import default_layer, grad_cam

    torch.manual_seed(0)
    model = create_model(arch, 4)
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    nn.init.normal_(head.weight, std=0.1)  # BiT zero-initialises its head: give the gradients values
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    # Randomly initialised EfficientNets' last features are ~1e-14, where the reference's 1e-7
    # floor rules: the norms' statistics from the batch (as training would) give them a scale.
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(images)
    model.eval()
    targets = [0, 2, 3]
    ours = grad_cam(model, images, target=torch.tensor(targets)).numpy()
    with reference.GradCAM(model=model, target_layers=[default_layer(model)]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.995 and np.abs(a - b).max() < 0.05
