"""int8 deployment (spermfuse/deploy/quantize.py): the accuracy guard and the interval it reports."""

import numpy as np
import pytest

from spermfuse.deploy.reduced_precision import Comparison, PrecisionError, check_agreement, paired_difference_interval


def comparison(agreement: float) -> Comparison:
    return Comparison(200, agreement, 0.8, 0.79, (-0.03, 0.01), 0.5, True)


def test_a_model_below_the_agreement_floor_is_refused_unless_forced(caplog):
    check_agreement(comparison(0.995), 0.99)
    with pytest.raises(PrecisionError, match="agreement with fp32 is 0.9800 .* below --min-agreement 0.99"):
        check_agreement(comparison(0.98), 0.99)
    check_agreement(comparison(0.98), 0.99, force=True)
    assert "written anyway" in caplog.text


def test_the_accuracy_change_interval_covers_the_true_change_about_95_times_in_100():
    rng = np.random.default_rng(0)
    cells, draws, misses = 300, 2000, 0
    # Per cell: both right, only fp32 right, only int8 right, both wrong.
    shares = np.array([0.70, 0.06, 0.03, 0.21])
    true_change = shares[2] - shares[1]
    for _ in range(draws):
        outcome = rng.choice(4, size=cells, p=shares)
        fp32, int8 = np.isin(outcome, [0, 1]), np.isin(outcome, [0, 2])
        low, high = paired_difference_interval(fp32, int8)
        misses += not low <= true_change <= high
    assert 0.03 <= misses / draws <= 0.075  # nominal 0.05; the standard error of 2,000 draws is 0.005


def test_orientations_are_each_images_four_quarter_turns_and_their_mirrors():
    from spermfuse.deploy.quantize import orientations

    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)  # no symmetry: 8 distinct views
    oriented = orientations(images)
    assert oriented.shape == (16, 3, 4, 4) and oriented.flags["C_CONTIGUOUS"]
    views = oriented.reshape(8, 2, 3, 4, 4)
    assert np.array_equal(views[0], images)  # the cells as they are come first
    for image in range(2):
        distinct = {view[image].tobytes() for view in views}
        assert len(distinct) == 8
        # Each view holds the image's own pixels, only moved.
        assert all(np.array_equal(np.sort(view[image], axis=None), np.sort(images[image], axis=None)) for view in views)
    assert np.array_equal(views[1][0, 0], np.rot90(images[0, 0]))
    assert np.array_equal(views[4][0, 0], images[0, 0, :, ::-1])


def convolution(name: str, source: str, channels_in: int, channels_out: int):
    """A 1x1 convolution node and its weight, named after ``name``."""
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((channels_out, channels_in, 1, 1), np.float32), f"{name}_w")
    return helper.make_node("Conv", [source, f"{name}_w"], [name], name=name), weight


def test_stems_and_squeeze_excitation_convolutions_stay_fp32():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from spermfuse.deploy.quantize import convolutions_kept_fp32

    # Two branches from one image, as the fused pair: a stem each; one branch has a
    # squeeze-and-excitation block (average -> conv -> relu -> conv -> sigmoid -> scale).
    nodes, weights = [], []
    for name, source, channels in [
        ("stem_a", "scaled", (3, 8)),
        ("body_a", "stem_a", (8, 8)),
        ("stem_b", "scaled", (3, 8)),
    ]:
        node, weight = convolution(name, source, *channels)
        nodes.append(node)
        weights.append(weight)
    squeeze, squeeze_weight = convolution("squeeze", "pooled", 8, 2)
    excite, excite_weight = convolution("excite", "squeezed", 2, 8)
    after, after_weight = convolution("after", "scaled_a", 8, 8)
    nodes = [
        helper.make_node("Div", ["image", "two"], ["scaled"]),
        *nodes,
        helper.make_node("ReduceMean", ["body_a"], ["pooled"], axes=[2, 3], keepdims=1),
        squeeze,
        helper.make_node("Relu", ["squeeze"], ["squeezed"]),
        excite,
        helper.make_node("Sigmoid", ["excite"], ["gate"]),
        helper.make_node("Mul", ["body_a", "gate"], ["scaled_a"]),
        after,
        helper.make_node("Add", ["after", "stem_b"], ["out"]),
    ]
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        nodes,
        "pair",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])],
        [two, *weights, squeeze_weight, excite_weight, after_weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert sorted(convolutions_kept_fp32(model)) == ["excite", "squeeze", "stem_a", "stem_b"]
