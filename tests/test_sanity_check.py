"""The cascading-randomisation check: its blocks, its similarity measures, and that it can fail."""

import numpy as np
import pytest
import torch

from spermfuse.core.models import create_model
from spermfuse.explain.gradcam import grad_cam
from spermfuse.explain.sanity_check import (
    cascade_blocks,
    cascaded,
    randomisation_curve,
    randomly_initialised,
    rank_correlation,
    ssim,
)
from spermfuse.reporting.explanation_tables import randomisation_markdown


def changed_parameters(model, other) -> list[str]:
    return [
        name
        for (name, before), (_, after) in zip(model.named_parameters(), other.named_parameters())
        if not torch.equal(before, after)
    ]


@pytest.mark.parametrize(
    "arch, head, bottom", [("efficientnet_tiny", "classifier.", "features.0."), ("resnetv2_tiny", "fc.", "stem.")]
)
def test_the_cascade_starts_at_the_logits_and_ends_at_the_input(arch, head, bottom):
    torch.manual_seed(123)  # not the cascade's seed: a fresh layer must differ from the model's own
    model = create_model(arch, 4).eval()
    blocks = cascade_blocks(model)
    first = changed_parameters(model, cascaded(model, 0))
    assert first and all(name.startswith(head) for name in first)  # the head alone
    everything = changed_parameters(model, cascaded(model, len(blocks) - 1))
    assert any(name.startswith(bottom) for name in everything)
    weights = [n for n, p in model.named_parameters() if p.ndim > 1]
    assert set(weights) <= set(everything)  # at the last step every weight is new


def test_the_resnets_second_block_is_its_last_stage_with_the_final_norm():
    torch.manual_seed(123)
    resnet = create_model("resnetv2_tiny", 4).eval()
    with torch.no_grad():
        resnet.norm.weight.mul_(3.0)  # so that a fresh norm differs
    changed = changed_parameters(resnet, cascaded(resnet, 1))
    assert any(name.startswith("stages.3.") for name in changed) and "norm.weight" in changed
    assert not any(name.startswith(("stem.", "stages.0.")) for name in changed)


def test_a_random_copy_is_repeatable_and_leaves_the_trained_model_alone():
    model = create_model("resnetv2_tiny", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = randomly_initialised(model, seed=5), randomly_initialised(model, seed=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    weights = [k for k, v in before.items() if k.endswith("weight") and v.ndim > 1]
    assert all(not torch.equal(first.state_dict()[k], before[k]) for k in weights)
    assert all(torch.equal(first.state_dict()[k], second.state_dict()[k]) for k in before)


def test_ssim_is_one_for_the_same_map_and_low_for_unrelated_maps():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((32, 32))) < 0.3
    assert rank_correlation(a, 2 * a + 1) == pytest.approx(1.0) and rank_correlation(a, np.zeros_like(a)) == 0.0


def images(count=24, seed=0):
    return torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_the_check_fails_for_a_map_that_does_not_depend_on_the_weights():
    x = images()
    brightness = [image.mean(0).numpy() for image in x]  # a "saliency" computed from the input alone
    steps = ["head", "head + 1 block", "all"]
    curve = randomisation_curve(lambda step: brightness, steps, brightness, (brightness, brightness), brightness)
    assert curve.fails and curve.spearman[-1].mean == pytest.approx(1.0)


def test_the_check_passes_for_grad_cam_of_a_network_whose_weights_are_then_randomised():
    torch.manual_seed(0)
    model = create_model("efficientnet_tiny", 4).eval()
    torch.nn.init.normal_(model.classifier[-1].weight)
    x = images()
    target = 1
    trained = [m.numpy() for m in grad_cam(model, x, target=target)]
    steps = len(cascade_blocks(model))
    randomised = {s: [m.numpy() for m in grad_cam(cascaded(model, s, seed=3), x, target=target)] for s in range(steps)}
    null = tuple([m.numpy() for m in grad_cam(randomly_initialised(model, seed=s), x, target=target)] for s in (1, 2))
    curve = randomisation_curve(
        lambda s: randomised[s], [str(s) for s in range(steps)], trained, null, [image.mean(0).numpy() for image in x]
    )
    assert not curve.fails and curve.spearman[-1].high < 0.5
    assert len(curve.steps) == steps and curve.images == 24


def test_flat_trained_maps_make_the_check_inconclusive_not_passed():
    flat = [np.zeros((64, 64)) for _ in range(24)]  # Grad-CAM of a pair that learned nothing: zero everywhere
    noise = [np.random.default_rng(i).random((64, 64)) for i in range(24)]
    curve = randomisation_curve(lambda step: noise, ["head", "all"], flat, (noise, noise[::-1]), noise)
    assert curve.inconclusive and not curve.fails and curve.flat_maps == 24
    assert "**inconclusive**" in randomisation_markdown(curve) and "passes" not in randomisation_markdown(curve)


def test_flat_trained_maps_are_left_out_and_counted():
    x = images()
    brightness = [image.mean(0).numpy() for image in x]
    trained = [np.zeros((64, 64)) if i % 2 else brightness[i] for i in range(len(x))]  # half flat
    curve = randomisation_curve(lambda step: brightness, ["all"], trained, (brightness, brightness), brightness)
    # The informative half still correlates perfectly; counted with the flat half it would look like 0.5.
    assert curve.fails and curve.spearman[-1].mean == pytest.approx(1.0) and curve.flat_maps == 12
    assert "12 of 24 trained maps are flat" in randomisation_markdown(curve)
