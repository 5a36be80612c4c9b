import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from torch import nn

from spermfuse.benchmarks import profiling
from spermfuse.benchmarks.ceiling import (
    RUNTIMES,
    fastest_matrix_rate,
    matrix_multiply_adds,
    matrix_product,
    random_matrices,
)
from spermfuse.benchmarks.flops import count_flops, count_flops_by_op
from spermfuse.core.models import create_model
from spermfuse.core.models.resnetv2 import StdConv2d
from spermfuse.deploy.export import onnx_available

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return run_script("benchmark.py", *args)


def test_convolution_counts_one_flop_per_multiply_add():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(1, 3, 10, 10)) == 8 * 10 * 10 * 3 * 3 * 3


def test_grouped_convolution_divides_by_groups():
    conv = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=8, bias=False)
    assert count_flops(conv, torch.randn(2, 8, 5, 5)) == 2 * 8 * 5 * 5 * 1 * 3 * 3


def test_linear_counts_in_times_out_per_sample():
    assert count_flops(nn.Linear(20, 7), torch.randn(4, 20)) == 4 * 20 * 7


def test_norms_count_per_element_as_fvcore():
    x = torch.randn(2, 8, 6, 6)
    assert count_flops(nn.BatchNorm2d(8).eval(), x) == 2 * x.numel()  # eval, affine
    assert count_flops(nn.BatchNorm2d(8, affine=False).eval(), x) == x.numel()
    assert count_flops(nn.BatchNorm2d(8).train(), x) == 5 * x.numel()  # training mode, affine
    assert count_flops(nn.GroupNorm(4, 8), x) == 5 * x.numel()
    assert count_flops(nn.GroupNorm(4, 8, affine=False), x) == 4 * x.numel()


def test_adaptive_average_pool_counts_its_input_and_activations_count_nothing():
    x = torch.randn(1, 4, 6, 6)
    assert count_flops(nn.AdaptiveAvgPool2d(1), x) == x.numel()
    assert count_flops(nn.AdaptiveAvgPool2d(2), x) == x.numel()
    assert count_flops(nn.Sequential(nn.ReLU(), nn.SiLU(), nn.Sigmoid()), x) == 0


def test_weight_standardisation_counts_four_per_weight_element():
    conv = StdConv2d(3, 4, kernel_size=3, padding=1, bias=False).eval()
    counter = count_flops_by_op(conv, torch.randn(1, 3, 5, 5))
    assert counter.by_op["native_batch_norm"] == 4 * conv.weight.numel()
    assert counter.by_op["convolution"] == 4 * 5 * 5 * 3 * 3 * 3
    assert conv.use_inference_cache  # restored after counting


@pytest.mark.parametrize("name, gflops", [("efficientnetv2_s", 3.39), ("resnet50v2", 4.95)])
def test_paper_gflops_at_240_pixels(name, gflops):
    model = create_model(name, 18).eval()
    assert round(count_flops(model, torch.randn(1, 3, 240, 240)) / 1e9, 2) == gflops


def test_standardised_kernel_cache_follows_weight_updates():
    conv = StdConv2d(2, 3, kernel_size=1, bias=False).eval()
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        first = conv(x)
        conv.weight.mul_(-1.0)
        second = conv(x)
    assert torch.allclose(first, -second, atol=1e-5)


def test_standardised_kernel_cache_keeps_the_channels_last_layout():
    conv = StdConv2d(4, 8, kernel_size=3, padding=1, bias=False).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = conv(x)
        conv.to(memory_format=torch.channels_last)
        actual = conv(x.contiguous(memory_format=torch.channels_last))
    assert conv._cached_weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_latency_harness_reports_percentiles():
    settings = profiling.InferenceSettings(img_size=32)
    latency = profiling.inference_latency(
        create_model("efficientnet_tiny", 3), torch.device("cpu"), settings, warmup=1, iters=4
    )
    assert latency.iterations == 4 and latency.p10_ms <= latency.median_ms <= latency.p90_ms
    assert latency.fps == pytest.approx(1000 / latency.median_ms)


def test_side_by_side_timing_alternates_the_calls_after_warming_each():
    calls = []
    latencies = profiling.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), warmup=2, iters=3
    )
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert latencies["a"].iterations == latencies["b"].iterations == 3


def test_benchmark_script_prints_the_table(tmp_path):
    result = run_benchmark(
        "--models",
        "resnetv2_tiny",
        "efficientnet_tiny",
        "--img-size",
        "32",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert result.returncode == 0, result.stderr
    fusion_row = next(line for line in result.stdout.splitlines() if line.startswith("| fusion |"))
    assert fusion_row.endswith("| - | - | - | - |")  # the paper's figures belong to the paper's pair only
    assert (
        "| fusion_concurrent |" in result.stdout
        and "machine: CPU" in result.stdout
        and "measured on the CPU" in result.stdout
    )
    assert (tmp_path / "b.json").is_file()


@pytest.mark.parametrize("flag", ["--half", "--cuda-graph"])
def test_gpu_only_flags_on_the_cpu_fail_with_one_line_before_any_output(flag, tmp_path):
    result = run_benchmark("--device", "cpu", flag, "--json", str(tmp_path / "b.json"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {flag} needs a CUDA device (--device cuda); on the CPU use --amp on for bf16"
    ]
    assert not (tmp_path / "b.json").exists()


def test_an_unknown_device_fails_with_one_line():
    result = run_benchmark("--device", "gpu0")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: --device gpu0: not a device; use auto, cpu or cuda"]


def test_padding_suite_times_both_paddings_of_the_efficientnets_only(tmp_path):
    result = run_benchmark(
        "--suite",
        "padding",
        "--models",
        "resnetv2_tiny",
        "efficientnet_tiny",
        "--img-size",
        "32",
        "--iters",
        "10",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    assert list(results) == ["efficientnet_tiny"]  # the ResNetV2 has no same padding
    assert {"symmetric", "same", "latency_pct", "train_step_pct"} <= set(results["efficientnet_tiny"])
    assert "| efficientnet_tiny | same vs symmetric |" in result.stdout


def test_explain_suite_times_grad_cam_beside_the_forward(tmp_path):
    result = run_benchmark(
        "--suite",
        "explain",
        "--models",
        "efficientnet_tiny",
        "resnetv2_tiny",
        "--img-size",
        "32",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "b.json"),
        "--markdown",
        str(tmp_path / "e.md"),
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    assert results["grad_cam_ms"] > 0 and results["forward_ms"] > 0 and results["occlusion_images_per_s"] > 0
    assert "| efficientnet_tiny + resnetv2_tiny | 32 |" in (tmp_path / "e.md").read_text()


def test_samples_suite_scores_every_method_on_simulated_patients_from_held_out_logits(tmp_path):
    import numpy as np

    from spermfuse.core.logits import save_logits
    from spermfuse.synthetic import SPERM18_CLASSES

    rng = np.random.default_rng(0)
    for fold in (1, 2):
        labels = np.repeat(np.arange(18), 8)
        logits = rng.normal(size=(len(labels), 18)) + 3.0 * np.eye(18)[labels]
        paths = [f"{fold}_{i}.png" for i in range(len(labels))]
        save_logits(
            tmp_path / "fusion" / f"fold{fold}" / "test_logits.npz",
            logits,
            labels,
            paths,
            SPERM18_CLASSES,
            "fusion",
            fold,
        )
    result = run_benchmark(
        *"--suite samples --simulated-samples 4 --boot 30 --rounds 1 --device cpu".split(),
        *["--logits-from", str(tmp_path / "fusion"), "--json", str(tmp_path / "b.json")],
        *["--markdown", str(tmp_path / "s.md")],
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["results"]["rows"]
    assert [(r["method"], r["confusion_cells"]) for r in rows] == [
        (m, c) for m in ("cc", "acc", "pcc", "em") for c in (None, 300)
    ]
    assert all(r["samples"] == 4 for r in rows)
    text = (tmp_path / "s.md").read_text()
    assert "--simulated-samples 4 --boot 30" in text and "| acc | 300 cells |" in text


@pytest.fixture(scope="module")
def sample_report_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """One tiny sample-report suite run: the process and its --json results."""
    out = tmp_path_factory.mktemp("sample_report") / "b.json"
    result = run_benchmark(
        *"--suite sample-report --models efficientnet_tiny resnetv2_tiny --img-size 32 --rounds 1 --device cpu".split(),
        *["--json", str(out)],
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())["results"]


def test_sample_report_suite_times_a_200_cell_report_per_runtime(sample_report_run):
    result, results = sample_report_run
    assert results["median_s"]["eager"] > 0 and results["median_s"]["bf16 program (--precision bf16)"] > 0
    assert "One 200-cell sample report" in result.stdout


def test_no_runtime_of_the_sample_report_beats_its_arithmetic_floor(sample_report_run):
    result, results = sample_report_run
    assert set(results["floor_s"]) == set(results["median_s"])
    for runtime, floor in results["floor_s"].items():
        assert 0 < floor < results["median_s"][runtime]
    assert "| floor s |" in result.stdout


def test_matrix_work_counts_convolutions_and_matrix_products_not_normalisation():
    model = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    assert matrix_multiply_adds([model, model], 10) == 2 * (8 * 10 * 10 * 3 * 3 * 3 + 8 * 5)


def as_float64(matrix) -> np.ndarray:
    """A torch tensor or numpy array as a float64 array."""
    return torch.as_tensor(matrix).double().numpy()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_timed_matrix_product_multiplies_in_its_runtimes_number_format(runtime):
    if runtime.startswith("ONNX") and not onnx_available(runtime=True):
        pytest.skip("needs the export extra")
    left, right = random_matrices(runtime, 48)
    formats = {
        "PyTorch fp32": (torch.float32,) * 2,
        "PyTorch bf16": (torch.bfloat16,) * 2,
        "ONNX Runtime fp32": (np.float32,) * 2,
        "ONNX Runtime int8": (np.uint8, np.int8),
    }
    assert (left.dtype, right.dtype) == formats[runtime]
    product = as_float64(matrix_product(runtime, left, right)())
    exact = runtime.endswith("int8")  # integers up to 48 * 255 * 128 are exact in int32
    tolerance = 0 if exact else 0.05 if runtime.endswith("bf16") else 1e-4
    np.testing.assert_allclose(product, as_float64(left) @ as_float64(right), rtol=tolerance, atol=tolerance * 10)


def test_an_unknown_runtime_has_no_matrix_rate():
    with pytest.raises(ValueError, match="PyTorch fp32"):
        fastest_matrix_rate("TensorRT fp8")


def test_an_onnx_runtime_profile_is_read_as_each_kind_of_nodes_share_of_the_kernel_time(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "dur": 1000},
        {"cat": "Node", "name": "conv_1_kernel_time", "dur": 30, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "conv_2_kernel_time", "dur": 45, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "conv_2_fence_before", "dur": 500, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "dq_kernel_time", "dur": 25, "args": {"op_name": "DequantizeLinear"}},
    ]
    (tmp_path / "profile.json").write_text(json.dumps(events))
    shares = profiling.onnx_runtime_op_shares(tmp_path / "profile.json")
    assert list(shares) == ["QLinearConv", "DequantizeLinear"]
    assert shares == pytest.approx({"QLinearConv": 0.75, "DequantizeLinear": 0.25})
