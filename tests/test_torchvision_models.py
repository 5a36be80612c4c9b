"""Every torchvision classifier as a member (``--arch tv:<name>``): its head found and replaced in
every family, torchvision state dicts loaded strictly, and a pair of them through the whole
pipeline (train, fuse, evaluate, export, predict with Grad-CAM, samples)."""

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_script, run_train

from spermfuse.core.errors import ConfigError
from spermfuse.core.models import WeightsError, create_model, get_spec, list_models
from spermfuse.core.models.registry import torchvision_names
from spermfuse.explain.gradcam import default_layer

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet_int8-converted.pth"
# The smallest classifier of every torchvision family.
FAMILIES = [
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
    "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0", "swin_t", "swin_v2_t", "vgg11",
    "vit_b_32", "wide_resnet50_2",
]  # fmt: skip


def test_every_torchvision_classifier_is_listed_and_every_family_is_covered_here():
    names = torchvision.models.list_models(module=torchvision.models)
    assert [f"tv:{n}" for n in names] == torchvision_names() and set(torchvision_names()) <= set(list_models())
    family = re.compile(r"[a-z]+")  # resnet18 -> resnet, vgg11_bn -> vgg, wide_resnet50_2 -> wide
    assert {family.match(n).group() for n in names} == {family.match(n).group() for n in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_the_imagenet_head_is_replaced_by_one_for_the_data_classes(name):
    spec = get_spec(f"tv:{name}")
    context = torch.device("meta") if not name.startswith("regnet") else torch.device("cpu")
    with context:
        model = spec.builder(5, math.nan, 0.0, "symmetric")
    head = model.get_submodule(spec.head)
    assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 5
    outputs = [getattr(m, "out_features", None) for m in model.modules()]
    assert 1000 not in outputs


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "convnext_tiny", "squeezenet1_0", "swin_t"])
def test_grad_cam_finds_the_last_spatial_map_before_the_head(name):
    model = create_model(f"tv:{name}", 3)
    layer = default_layer(model)
    maps = []
    hook = layer.register_forward_hook(lambda m, i, out: maps.append(out))
    model.eval()(torch.rand(1, 3, 96, 96))
    hook.remove()
    assert maps[0].ndim == 4 and maps[0].shape[2] > 1 and maps[0].shape[3] > 1


def test_a_vision_transformer_has_no_map_to_explain_and_says_so():
    with pytest.raises(ConfigError, match="no default Grad-CAM layer for VisionTransformer"):
        default_layer(create_model("tv:vit_b_32", 3))


def test_dropout_is_torchvisions_own_and_another_value_is_refused():
    with pytest.raises(ConfigError, match="keep their own dropout"):
        create_model("tv:resnet18", 3, dropout=0.3)


def test_a_torchvision_state_dict_loads_strictly_with_identical_outputs(tmp_path):
    reference = torchvision.models.resnet18().eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("tv:resnet18", 1000, weights=tmp_path / "resnet18.pth").eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(image), reference(image))
    fine_tuned = create_model("tv:resnet18", 4, weights=tmp_path / "resnet18.pth")  # only the head is new
    assert torch.equal(fine_tuned.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_weights_of_another_network_are_refused_naming_the_keys(tmp_path):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(WeightsError, match="does not fit this model .*unmatched keys: "):
        create_model("tv:resnet18", 4, weights=tmp_path / "mobilenet.pth")


def test_googlenets_auxiliary_heads_in_a_checkpoint_are_left_aside(tmp_path):
    torch.save(torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict(), tmp_path / "g.pth")
    model = create_model("tv:googlenet", 3, weights=tmp_path / "g.pth")
    assert not any(name.startswith("aux") for name in model.state_dict())


@pytest.mark.skipif(not STAND_IN.is_file(), reason="the shared ImageNet stand-in is not on this machine")
def test_the_shared_imagenet_stand_in_loads_into_mobilenet_v2():
    model = create_model("tv:mobilenet_v2", 4, weights=STAND_IN)
    assert model.features[0][0].weight.std() > 0.2  # trained filters, not a random initialisation (0.08)


def test_a_vision_transformer_needs_its_input_size(tmp_path, tiny_sperm):
    result = run_train("--arch", "tv:vit_b_32", "--data", str(tiny_sperm), "--preset", "tiny", "--out", str(tmp_path))
    assert result.returncode == 2 and "--img-size 32: tv:vit_b_32 takes 224 px inputs only" in result.stderr


PAIR = ["tv:mobilenet_v3_small", "tv:shufflenet_v2_x0_5"]


def script(*flags: str) -> subprocess.CompletedProcess:
    return run_script(*flags, timeout=600)


def test_a_pair_of_torchvision_members_trains_fuses_evaluates_exports_and_explains(tiny_sperm, tmp_path):
    runs = tmp_path / "runs"
    for arch in PAIR:
        result = run_train(
            "--fold", "1", "--arch", arch, "--data", str(tiny_sperm), "--preset", "tiny", "--out", str(runs)
        )
        assert result.returncode == 0, result.stderr[-2000:]
    models = ["--runs", str(runs), "--models", *PAIR]
    assert script("fuse.py", "--grid", "--select", "val", *models).returncode == 0
    evaluated = script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (tmp_path / "reports" / "evaluation" / "confusion_fusion.png").is_file()
    exported = script("fuse.py", "--export", str(tmp_path / "deploy"), "--fold", "1", *models)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "deploy" / "model.json").is_file()
    images = tmp_path / "new"
    images.mkdir()
    shutil.copy(next((tiny_sperm / "Normal").glob("*.png")), images / "cell.png")
    predicted = script(
        "fuse.py",
        "--predict",
        str(images),
        "--output",
        str(tmp_path / "p.csv"),
        "--explain",
        str(tmp_path / "why"),
        *models,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "why" / "cell.png.png").is_file()
    # Samples: held-out cells the pair gets right (as tests/test_end_to_end.py's samples test), so
    # the adjusted fractions run end to end.
    from spermfuse.core.logits import load_logits, save_logits

    for arch in PAIR:
        path = runs / arch / "fold1" / "cal_logits.npz"
        held_out = load_logits(path)
        right = 6.0 * np.eye(len(held_out.classes))[held_out.labels]
        save_logits(path, right, held_out.labels, held_out.paths, held_out.classes, arch, 1, held_out.split)
    samples = tmp_path / "samples"
    for sample, name in (("a", "Normal"), ("b", "PinHead")):
        (samples / sample).mkdir(parents=True)
        for image in sorted((tiny_sperm / name).glob("*.png")):
            shutil.copy(image, samples / sample / image.name)
    output = tmp_path / "out" / "p.csv"
    result = script("fuse.py", "--predict", str(samples), "--output", str(output), *models, "--fold", "1", "--samples")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "samples.csv").is_file()


def test_pretrained_resolves_torchvisions_published_checkpoint_with_the_digest_its_name_carries():
    from spermfuse.store.catalogue import find_entry

    entry = find_entry("tv:resnet50", "imagenet1k_v1")
    assert entry.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth" and entry.sha256 == "0676ba61"
    default = find_entry("tv:mobilenet_v2")
    assert default.default and default.layout == "state dict" and ":" not in default.file_name
    with pytest.raises(ConfigError, match="--pretrained nope: not a checkpoint of tv:resnet50"):
        find_entry("tv:resnet50", "nope")
