import numpy as np
import pytest
import torch

from spermfuse.core.errors import ConfigError
from spermfuse.core.models import REGISTRY, create_model, get_spec, list_models
from spermfuse.core.models.freezing import freeze_backbone, set_frozen_norms_to_eval, unfreeze_last
from spermfuse.core.models.weights import WeightsError
from spermfuse.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from spermfuse.store.pretrained import load_initial_weights

timm = pytest.importorskip("timm")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, millions", [("efficientnetv2_s", 20.20), ("resnet50v2", 23.54)])
def test_parameter_counts_match_the_paper(name, millions):
    assert round(n_params(create_model(name, 18)) / 1e6, 2) == millions


@pytest.mark.parametrize("name, dropout", [("efficientnetv2_s", 0.7), ("resnet50v2", 0.5), ("efficientnet_b4", 0.4)])
def test_default_dropouts_are_the_papers(name, dropout):
    model = create_model(name, 4)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates[-1] == dropout
    assert [m.p for m in create_model(name, 4, dropout=0.1).modules() if isinstance(m, torch.nn.Dropout)][-1] == 0.1


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="resnet50v2"):
        create_model("resnet50", 18)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_model_runs_forward_and_backward_in_channels_last(name):
    model = create_model(name, 5).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()


def random_timm_bit(num_classes=18):
    torch.manual_seed(0)
    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=num_classes).eval()
    with torch.no_grad():  # timm zero-initialises the head; give it values so logits are informative
        reference.head.fc.weight.normal_(0, 0.02)
        reference.head.fc.bias.normal_(0, 0.02)
        for module in reference.modules():  # and non-trivial norm affine parameters
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return reference


def test_resnetv2_compiles_to_one_graph_for_inference():
    model = create_model("resnetv2_tiny", 3).eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)  # fills the eager inference cache, which compiled code must not consult
        compiled(x)
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_timm_resnetv2_state_dict_gives_the_same_logits(tmp_path):
    reference = random_timm_bit()
    path = tmp_path / "timm_bit.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("resnet50v2", 18, weights=path).eval()
    x = torch.randn(2, 3, 240, 240)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() < 1e-4


def write_bit_npz(reference, path):
    """timm's BiT model written in Google's .npz names and layout."""
    arrays = {}

    def hwio(t):
        return t.detach().numpy().transpose(2, 3, 1, 0) if t.ndim == 4 else t.detach().numpy()

    p = "resnet/"
    arrays[p + "root_block/standardized_conv2d/kernel"] = hwio(reference.stem.conv.weight)
    arrays[p + "group_norm/gamma"] = hwio(reference.norm.weight)
    arrays[p + "group_norm/beta"] = hwio(reference.norm.bias)
    arrays[p + "head/conv2d/kernel"] = hwio(reference.head.fc.weight)
    arrays[p + "head/conv2d/bias"] = hwio(reference.head.fc.bias)
    for i, stage in enumerate(reference.stages):
        for j, block in enumerate(stage.blocks):
            unit = f"{p}block{i + 1}/unit{j + 1:02d}/"
            for letter, k in (("a", 1), ("b", 2), ("c", 3)):
                arrays[f"{unit}{letter}/standardized_conv2d/kernel"] = hwio(getattr(block, f"conv{k}").weight)
                arrays[f"{unit}{letter}/group_norm/gamma"] = hwio(getattr(block, f"norm{k}").weight)
                arrays[f"{unit}{letter}/group_norm/beta"] = hwio(getattr(block, f"norm{k}").bias)
            if block.downsample is not None:
                arrays[f"{unit}a/proj/standardized_conv2d/kernel"] = hwio(block.downsample.conv.weight)
    np.savez(path, **arrays)


def test_bit_npz_gives_the_same_logits(tmp_path):
    reference = random_timm_bit(num_classes=18)
    path = tmp_path / "BiT-M-R50x1.npz"
    write_bit_npz(reference, path)
    ours = create_model("resnet50v2", 18, weights=path).eval()
    x = torch.randn(1, 3, 240, 240)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() < 1e-4


def test_head_is_reinitialised_when_class_count_differs(tmp_path):
    source = create_model("resnetv2_tiny", 10)
    path = tmp_path / "ten.pt"
    torch.save({"model": source.state_dict(), "arch": "resnetv2_tiny"}, path)
    target = create_model("resnetv2_tiny", 3, weights=path)
    assert torch.equal(target.stem.conv.weight, source.stem.conv.weight)
    assert target.fc.weight.shape == (3, source.fc.weight.shape[1])


def test_mismatched_checkpoint_is_an_error_not_a_partial_load(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("efficientnet_tiny", 3).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("resnetv2_tiny", 3, weights=path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": object()}, path)
    with pytest.raises(WeightsError, match="evil.pt"):
        create_model("resnetv2_tiny", 3, weights=path)


def test_timm_tf_efficientnetv2_s_weights_load_into_torchvision_layout(tmp_path):
    reference = timm.create_model("tf_efficientnetv2_s", pretrained=False, num_classes=1000)
    path = tmp_path / "tf_v2s.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("efficientnetv2_s", 18, weights=path)
    theirs = [v for k, v in reference.state_dict().items() if not k.startswith("classifier.")]
    mine = [v for k, v in ours.state_dict().items() if not k.startswith("classifier.")]
    assert len(mine) == len(theirs) > 300 and all(
        torch.equal(a, b) for a, b in zip(mine, theirs)
    )  # every tensor, in order
    assert ours.classifier[1].weight.shape == (18, 1280)


def test_normalisation_follows_the_weights(tmp_path):
    bit = tmp_path / "BiT-M-R50x1.npz"
    write_bit_npz(random_timm_bit(num_classes=18), bit)
    tf_v2s = tmp_path / "tf_v2s.pth"
    torch.save(timm.create_model("tf_efficientnetv2_s", pretrained=False).state_dict(), tf_v2s)
    plain = tmp_path / "plain.pt"
    torch.save(create_model("resnetv2_tiny", 3).state_dict(), plain)
    half = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    for name, path, expected in (
        ("resnet50v2", bit, half),
        ("efficientnetv2_s", tf_v2s, half),
        ("resnetv2_tiny", plain, (IMAGENET_MEAN, IMAGENET_STD)),
    ):
        report = load_initial_weights(create_model(name, 18), name, weights=path)
        assert (report.mean, report.std) == expected, name


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = create_model("efficientnet_tiny", 4)
    freeze_backbone(model, get_spec("efficientnet_tiny").head)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.1.weight", "classifier.1.bias"]


def test_unfreeze_last_counts_leaf_modules_from_the_output_end():
    model = create_model("efficientnet_tiny", 4)
    freeze_backbone(model, "classifier.1")
    names = unfreeze_last(model, 5)
    modules = dict(model.named_modules())
    assert len(names) == 5 and all(not list(modules[name].children()) for name in names)  # leaves
    assert names[-1] == "classifier.1" and names[-2] == "classifier.0"  # dropout counts as a layer
    trainable = {n.rpartition(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(names)  # nothing else trains
    order = [name for name, module in model.named_modules() if not list(module.children())]
    earlier = [modules[n] for n in order[: order.index(names[0])] if list(modules[n].parameters())]
    assert earlier and not any(p.requires_grad for p in earlier[-1].parameters())  # the last weighted leaf before them
    model.train()
    set_frozen_norms_to_eval(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms[0].training  # frozen: running statistics
    assert norms[-1].training  # within the last 5 layers: trains


def test_registry_lists_every_model():
    assert {"efficientnetv2_s", "resnet50v2", "efficientnet_b4"} <= set(list_models())


def test_efficientnets_have_no_stochastic_depth_unless_asked():
    from torchvision.ops import StochasticDepth

    def rates(model):
        return [m.p for m in model.modules() if isinstance(m, StochasticDepth)]

    assert max(rates(create_model("efficientnetv2_s", 18))) == 0.0  # torchvision's builder alone would use 0.2
    assert max(rates(create_model("efficientnetv2_s", 18, drop_path=0.2))) == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ConfigError, match="--drop-path"):
        create_model("resnetv2_tiny", 3, drop_path=0.1)


# --------------------------------------------------------------------------- TensorFlow "same" padding


def test_same_padding_puts_the_odd_pixel_after_as_tensorflow_does():
    from spermfuse.core.models.efficientnet import same_padding

    assert same_padding(240, 3, 2, 1) == (0, 1)  # ceil(240/2)=120 outputs need 241 pixels
    assert same_padding(225, 3, 2, 1) == (1, 1)
    assert same_padding(224, 5, 2, 1) == (1, 2)
    assert same_padding(7, 3, 1, 1) == (1, 1)  # stride 1, odd kernel: symmetric anyway
    assert same_padding(8, 1, 2, 1) == (0, 0)


def calibrated_timm(name: str, size: int) -> torch.nn.Module:
    """A random timm model whose BatchNorm statistics are those of its own activations, so
    that the logits stay in a sane range (random weights with unit running variance blow up)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=18)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
        model.classifier.weight.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize(
    "ours, theirs, size",
    [("efficientnetv2_s", "tf_efficientnetv2_s", 240), ("efficientnet_b4", "tf_efficientnet_b4", 225)],
)
def test_same_padding_gives_timms_tf_logits_for_the_same_state_dict(tmp_path, ours, theirs, size):
    reference = calibrated_timm(theirs, size)
    path = tmp_path / f"{theirs}.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        same = create_model(ours, 18, weights=path, padding="same").eval()(x)
        symmetric = create_model(ours, 18, weights=path).eval()(x)
    scale = expected.abs().max()
    assert 0.1 < scale < 100  # sane activations: the comparison means something
    assert (same - expected).abs().max() / scale <= 1e-4
    assert (symmetric - expected).abs().max() / scale > 1e-2  # the shifted windows are a real difference


def test_same_padding_keeps_the_parameters_and_their_names():
    symmetric, same = create_model("efficientnet_b0", 4), create_model("efficientnet_b0", 4, padding="same")
    assert [(k, v.shape) for k, v in symmetric.state_dict().items()] == [
        (k, v.shape) for k, v in same.state_dict().items()
    ]


def test_same_padding_is_refused_for_the_resnets():
    with pytest.raises(ConfigError, match="--padding same: applies to the EfficientNets"):
        create_model("resnetv2_tiny", 3, padding="same")
