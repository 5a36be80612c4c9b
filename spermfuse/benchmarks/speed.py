"""Speed suites: parameters, FLOPs and latency of the backbones and the fused pair (the paper's
Table 8), training steps (AMP, EMA, padding, CPU speed-ups), timm's ResNetV2, export runtimes, where
int8 time goes by kind of node, and the cost of an explanation.

Long because it is a list: one function per suite, each read on its own."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.ema import WeightEMA
from ..core.errors import ConfigError
from ..core.fused_model import Classifier, FusedModel
from ..core.models import create_model, get_spec
from ..core.transforms import PipelineSpec, build
from ..data.folders import discover
from ..data.loaders import ImageDataset, make_loader
from ..deploy.bf16 import BF16_FILE, load_program, run_program
from ..deploy.export import export_onnx, export_program, onnx_available
from ..deploy.quantize import QUANTIZED_OPS, cpu_session, quantize_int8
from ..distributed import DistributedContext
from ..explain.gradcam import fused_grad_cam, fused_pair_members, occlusion
from ..page import markdown_table
from ..synthetic.cached_sets import ensure_default_data
from . import flops, profiling
from .context import Benchmark
from .fused_pair import FusedPair

log = logging.getLogger(__name__)

PAPER = {  # RTX 5070 Ti, batch 1, 240 px (Table 8)
    "efficientnetv2_s": {"params_m": 20.20, "gflops": 3.39, "latency_ms": 10.82, "fps": 92.43},
    "resnet50v2": {"params_m": 23.54, "gflops": 4.95, "latency_ms": 6.54, "fps": 152.99},
    "fusion": {"params_m": 43.74, "gflops": 8.34, "latency_ms": 16.96, "fps": 58.95},
}
PAPER_PAIR = {"efficientnetv2_s", "resnet50v2"}  # the "fusion" row compares with the paper only for these
PAPER_AMP = {"efficientnetv2_s": "-46.6 % memory, +70.3 % speed", "resnet50v2": "~0 % memory, +17.4 % speed"}


def inference_model(name: str, bench: Benchmark) -> torch.nn.Module:
    """A model of ``name`` in eval mode on the benchmark's device, compiled with ``--compile``."""
    model = create_model(name, bench.num_classes).eval().to(bench.device)
    return torch.compile(model) if bench.compile else model


def settings_for(bench: Benchmark, batch_size: int) -> profiling.InferenceSettings:
    """The inference settings of the latency runs (``--amp``, ``--half``, ``--channels-last``, ``--cuda-graph``)."""
    return profiling.InferenceSettings(
        batch_size, bench.img_size, bench.amp, bench.half, bench.channels_last, bench.cuda_graph
    )


def training_step(
    model: torch.nn.Module, bench: Benchmark, batch: int = 8, bf16: bool = False, channels_last: bool = False
) -> Callable[[], None]:
    """One AdamW step of ``model`` on a fixed random batch (forward, backward, update), optionally
    under bf16 autocast and in channels-last memory format."""
    model.train().to(bench.device)
    x = torch.randn(batch, 3, bench.img_size, bench.img_size, device=bench.device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, bench.num_classes, (batch,), device=bench.device)

    def step() -> None:
        with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def models_suite(bench: Benchmark) -> dict:
    """Each backbone, then the pair as the paper runs it (one member after the other) and
    with both members at once (two CUDA streams, or two CPU threads)."""
    models = {name: inference_model(name, bench) for name in bench.models}
    candidates = dict(models)
    if len(models) == 2:
        candidates["fusion"] = FusedPair(*models.values())
        candidates["fusion_concurrent"] = FusedPair(*models.values(), concurrent=True)
    example = torch.randn(1, 3, bench.img_size, bench.img_size)
    results = {}
    for name, model in candidates.items():  # counted before --half / --channels-last convert the members
        results[name] = {
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": flops.count_flops(model.cpu(), example) / 1e9,
        }
    log.info(
        "timing %s side by side, %d rounds after %d warm-up calls each ...",
        ", ".join(candidates),
        bench.iters,
        bench.warmup,
    )
    steps = {
        name: profiling.inference_step(model, bench.device, settings_for(bench, bench.batch_size))
        for name, model in candidates.items()
    }
    latencies = profiling.time_interleaved(steps, bench.device, bench.warmup, bench.iters, bench.progress)
    rows = []
    for name, model in candidates.items():
        latency = latencies[name]
        entry = results[name] | vars(latency) | {"fps": latency.fps * bench.batch_size}
        for batch in bench.throughput or []:
            t = profiling.inference_latency(
                model, bench.device, settings_for(bench, batch), max(bench.warmup // 10, 2), max(bench.iters // 10, 5)
            )
            entry[f"throughput_b{batch}"] = batch * 1000.0 / t.median_ms
        results[name] = entry
        paper = PAPER.get(name, {}) if name in bench.models or set(bench.models) == PAPER_PAIR else {}
        rows.append(
            [
                name,
                f"{entry['params_m']:.2f}",
                f"{entry['gflops']:.2f}",
                f"{latency.median_ms:.2f}",
                f"{latency.p10_ms:.2f} / {latency.p90_ms:.2f}",
                f"{entry['fps']:.2f}",
                paper.get("params_m", "-"),
                paper.get("gflops", "-"),
                paper.get("latency_ms", "-"),
                paper.get("fps", "-"),
            ]
        )
    header = [
        "model",
        "params (M)",
        "GFLOPs",
        "median ms",
        "p10 / p90 ms",
        "FPS",
        "paper M",
        "paper GFLOPs",
        "paper ms (GPU)",
        "paper FPS",
    ]
    bench.say(markdown_table(header, rows))
    if len(models) == 2:
        slower = max(results[n]["median_ms"] for n in models)
        bench.say(
            f"fused pair / slower member latency: {results['fusion']['median_ms'] / slower:.2f}x one after the other, "
            f"{results['fusion_concurrent']['median_ms'] / slower:.2f}x concurrent (paper: {16.96 / 10.82:.2f}x)\n"
        )
    if bench.train:
        results["training"] = training_suite(bench)
    return results


def training_suite(bench: Benchmark) -> dict:
    """Training speed and peak memory of each model with and without mixed precision."""
    out, rows = {}, []
    for name in bench.models:
        costs = {}
        for amp in ("off", "on"):
            model = create_model(name, bench.num_classes)
            costs[amp] = profiling.training_cost(
                model, bench.device, 8, bench.img_size, amp, bench.train_steps, 3, bench.num_classes
            )
        memory = 100.0 * (costs["on"].peak_memory_mb / costs["off"].peak_memory_mb - 1.0)
        speed = 100.0 * (costs["on"].images_per_second / costs["off"].images_per_second - 1.0)
        out[name] = {amp: vars(c) for amp, c in costs.items()} | {
            "memory_change_pct": memory,
            "speed_change_pct": speed,
        }
        rows.append(
            [
                name,
                f"{costs['off'].images_per_second:.1f}",
                f"{costs['on'].images_per_second:.1f}",
                f"{speed:+.1f} %",
                f"{costs['off'].peak_memory_mb:.0f}",
                f"{costs['on'].peak_memory_mb:.0f}",
                f"{memory:+.1f} %",
                PAPER_AMP.get(name, "-"),
            ]
        )
    memory_kind = "peak CUDA MB" if bench.device.type == "cuda" else "peak RSS MB (process, cumulative)"
    bench.say(
        markdown_table(
            [
                "model",
                "fp32 img/s",
                "AMP img/s",
                "speed",
                f"fp32 {memory_kind}",
                f"AMP {memory_kind}",
                "memory",
                "paper",
            ],
            rows,
        )
    )
    return out


def timm_suite(bench: Benchmark) -> dict:
    """Our resnet50v2 vs timm's resnetv2_50x1_bit: training step (batch 8) and batch-1 latency,
    in --rounds interleaved rounds (medians)."""
    import timm

    results, rows = {}, []
    for _ in range(bench.rounds):  # interleaved, so that both implementations share the machine's noise
        for name in ("spermfuse", "timm"):
            make = (
                (lambda: create_model("resnet50v2", bench.num_classes))
                if name == "spermfuse"
                else (lambda: timm.create_model("resnetv2_50x1_bit", num_classes=bench.num_classes))
            )
            train = profiling.training_cost(
                make(), bench.device, 8, bench.img_size, "off", bench.train_steps, 3, bench.num_classes
            )
            latency = profiling.inference_latency(
                make(), bench.device, profiling.InferenceSettings(img_size=bench.img_size), bench.warmup, bench.iters
            )
            results.setdefault(name, {"train_ms": [], "latency_ms": []})
            results[name]["train_ms"].append(train.median_step_ms)
            results[name]["latency_ms"].append(latency.median_ms)
    for name, r in results.items():
        rows.append([name, f"{np.median(r['train_ms']):.1f}", f"{np.median(r['latency_ms']):.2f}"])
    bench.say(markdown_table(["implementation", "train step ms (batch 8)", "latency ms (batch 1)"], rows))
    ratio_train = np.median(results["timm"]["train_ms"]) / np.median(results["spermfuse"]["train_ms"])
    ratio_latency = np.median(results["timm"]["latency_ms"]) / np.median(results["spermfuse"]["latency_ms"])
    bench.say(
        f"timm / spermfuse time: training step {ratio_train:.2f}x, batch-1 latency {ratio_latency:.2f}x (>1: ours faster)\n"
    )
    return results | {"timm_over_ours_train": ratio_train, "timm_over_ours_latency": ratio_latency}


def autocast_bf16(model: torch.nn.Module, channels_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` under CPU autocast to bf16: what a bf16 deployment would run (native on CPUs with
    AVX-512 BF16 or AMX, emulated and slower elsewhere). ``channels_last``: a copy of the model and
    the input in channels-last memory format, the layout oneDNN's bf16 (AMX) convolutions take
    without reordering."""
    if channels_last:
        model = copy.deepcopy(model)
        for convolution in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            convolution.to(memory_format=torch.channels_last)  # the fused model holds buffers of other ranks

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    return run


def export_suite(bench: Benchmark) -> dict:
    """The fused pair (--models, random weights, one fold, a = 0.5) as fuse.py --export writes it:
    eager PyTorch (fp32, and bf16 under autocast in both memory formats), the torch.export programs
    (fp32, and ``--precision bf16``'s traced under autocast), ONNX Runtime and its int8 model
    (``--precision int8``), batch-1 latency and batch-32 throughput, timed side by side in
    interleaved rounds (--warmup, --iters) on the CPU."""

    pair = [
        Classifier(
            create_model(name, bench.num_classes).eval(),
            PipelineSpec(bench.img_size),
            [str(c) for c in range(bench.num_classes)],
            Path(name),
        )
        for name in bench.models
    ]
    eager = FusedModel([pair], [[0.5, 0.5]]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.pt2").write_bytes(export_program(eager, bench.img_size))
        program = torch.export.load(str(Path(tmp) / "model.pt2")).module()
        concurrent = FusedPair(pair[0].model, pair[1].model, alpha=0.5, concurrent=True).eval()
        runners = {
            "eager": eager,
            "eager FusedPair, concurrent (float input)": lambda x: concurrent(x.float()),
            "torch.export (.pt2)": program,
            "eager bf16 (autocast)": autocast_bf16(eager),
            "eager bf16 (autocast), channels-last": autocast_bf16(eager, channels_last=True),
        }
        (Path(tmp) / BF16_FILE).write_bytes(export_program(eager, bench.img_size, bf16=True))
        bf16_program = load_program(Path(tmp) / BF16_FILE)
        runners["bf16 program (--precision bf16)"] = lambda x: run_program(bf16_program, x, bf16=True)
        if onnx_available():
            import onnxruntime

            export_onnx(eager, bench.img_size, Path(tmp) / "model.onnx")
            session = onnxruntime.InferenceSession(str(Path(tmp) / "model.onnx"))
            runners["ONNX Runtime"] = lambda x: session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            # Random weights and random cells: the speed of fuse.py --precision int8's model, not its accuracy.
            cells = torch.randint(0, 256, (32, 3, bench.img_size, bench.img_size), dtype=torch.uint8).numpy()
            quantize_int8(Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx", cells)
            int8 = cpu_session(Path(tmp) / "model_int8.onnx")
            runners["ONNX Runtime int8"] = lambda x: int8.run(None, {int8.get_inputs()[0].name: x.numpy()})[0]
        out, rows = {}, []
        for batch in (1, 32):
            x = torch.randint(0, 256, (batch, 3, bench.img_size, bench.img_size), dtype=torch.uint8)
            calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
            with torch.no_grad():
                timed = profiling.time_interleaved(calls, bench.device, bench.warmup, bench.iters)
            for name, latency in timed.items():
                out[f"{name}, batch {batch}"] = latency.median_ms
                rows.append(
                    [
                        name,
                        batch,
                        f"{latency.median_ms:.1f}",
                        f"{batch * 1000 / latency.median_ms:.1f}",
                        f"{timed['eager'].median_ms / latency.median_ms:.2f}x",
                    ]
                )
    bench.table(markdown_table(["runtime", "batch", "median ms", "images/s", "speed vs eager"], rows))
    return out


# The wider int8 choice the int8-profile suite times beside --precision int8's: EfficientNet's
# SiLU (Sigmoid, Mul) and the additions quantized too, so activations stay int8 between convolutions.
INT8_WITH_ACTIVATIONS = (*QUANTIZED_OPS, "Sigmoid", "Mul", "Add")
SHOWN_OP_TYPES = 5


def int8_profile_suite(bench: Benchmark) -> dict:
    """Where each member's time goes under ONNX Runtime (random weights, --img-size, a batch of
    --batch-size): fp32, the int8 model of ``--precision int8`` (convolutions only) and one with
    the activations quantized too (:data:`INT8_WITH_ACTIVATIONS`, not what the export writes),
    timed side by side in interleaved rounds; each with its kinds of node by share of the kernel time."""
    if not onnx_available(runtime=True):
        raise ConfigError("--suite int8-profile needs onnx and onnxruntime (pip install .[export])")
    import onnxruntime

    out, rows = {}, []
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (16, 3, bench.img_size, bench.img_size), dtype=np.uint8)
    images = rng.integers(0, 256, (bench.batch_size, 3, bench.img_size, bench.img_size), dtype=np.uint8)
    for name in bench.models:
        member = Classifier(
            create_model(name, bench.num_classes).eval(),
            PipelineSpec(bench.img_size),
            ["0"] * bench.num_classes,
            Path(name),
        )
        with tempfile.TemporaryDirectory() as tmp:
            models = {"ONNX Runtime fp32": Path(tmp) / "fp32.onnx"}
            export_onnx(FusedModel([[member]], [[1.0]]).eval(), bench.img_size, models["ONNX Runtime fp32"])
            for label, op_types in (
                ("int8 (--precision int8)", QUANTIZED_OPS),
                ("int8, activations too", INT8_WITH_ACTIVATIONS),
            ):
                models[label] = Path(tmp) / f"{len(models)}.onnx"
                quantize_int8(models["ONNX Runtime fp32"], models[label], cells, op_types=op_types)
            sessions = {}
            for label, path in models.items():
                options = onnxruntime.SessionOptions()
                options.enable_profiling, options.profile_file_prefix = True, str(path.with_suffix(""))
                sessions[label] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            calls = {
                label: (lambda session=session: session.run(None, {session.get_inputs()[0].name: images}))
                for label, session in sessions.items()
            }
            timed = profiling.time_interleaved(calls, bench.device, bench.warmup, bench.iters)
            for label, session in sessions.items():
                shares = profiling.onnx_runtime_op_shares(Path(session.end_profiling()))
                per_image = timed[label].median_ms / bench.batch_size
                out[f"{name}, {label}"] = {"ms_per_image": per_image, "op_shares": shares}
                shown = ", ".join(f"{op} {100 * share:.0f} %" for op, share in list(shares.items())[:SHOWN_OP_TYPES])
                rows.append(
                    [
                        name,
                        label,
                        f"{per_image:.2f}",
                        f"{timed['ONNX Runtime fp32'].median_ms / timed[label].median_ms:.2f}x",
                        shown,
                    ]
                )
    bench.table(
        markdown_table(
            ["model", "runtime", "ms per image (median)", "speed vs fp32", "kernel time by kind of node"], rows
        )
    )
    return out


def ema_suite(bench: Benchmark) -> dict:
    """A full training step (batch 8, AdamW) with and without ``--ema``'s update after it, timed
    side by side in interleaved rounds (--warmup, --iters) on the same model and batch."""
    out, rows = {}, []
    for name in bench.models:
        model = create_model(name, bench.num_classes)
        step, ema = training_step(model, bench), WeightEMA(model, 0.999)

        def step_with_ema() -> None:
            step()
            ema.update(model)

        timed = profiling.time_interleaved(
            {"plain": step, "ema": step_with_ema}, bench.device, bench.warmup, bench.iters
        )
        overhead = 100.0 * (timed["ema"].median_ms / timed["plain"].median_ms - 1.0)
        out[name] = {"plain_ms": timed["plain"].median_ms, "ema_ms": timed["ema"].median_ms, "overhead_pct": overhead}
        rows.append([name, f"{timed['plain'].median_ms:.1f}", f"{timed['ema'].median_ms:.1f}", f"{overhead:+.1f} %"])
    bench.say(markdown_table(["model", "step ms (median)", "step + EMA update ms", "overhead"], rows))
    return out


def padding_suite(bench: Benchmark) -> dict:
    """TensorFlow "same" padding against symmetric padding, the same weights: batch-1 latency and
    a training step (batch 8), each pair timed side by side in interleaved rounds."""
    out, rows = {}, []
    for name in [m for m in bench.models if get_spec(m).family == "efficientnet"]:
        torch.manual_seed(0)
        models = {"symmetric": create_model(name, bench.num_classes)}
        models["same"] = create_model(name, bench.num_classes, padding="same")
        models["same"].load_state_dict(models["symmetric"].state_dict())
        latency = profiling.time_interleaved(
            {
                p: profiling.inference_step(m.eval().to(bench.device), bench.device, settings_for(bench, 1))
                for p, m in models.items()
            },
            bench.device,
            bench.warmup,
            bench.iters,
        )
        steps = {p: training_step(m, bench) for p, m in models.items()}
        train = profiling.time_interleaved(steps, bench.device, max(bench.warmup // 10, 2), max(bench.iters // 10, 10))
        cost = {
            "latency_pct": 100.0 * (latency["same"].median_ms / latency["symmetric"].median_ms - 1.0),
            "train_step_pct": 100.0 * (train["same"].median_ms / train["symmetric"].median_ms - 1.0),
        }
        out[name] = {
            p: {"latency_ms": latency[p].median_ms, "train_step_ms": train[p].median_ms} for p in models
        } | cost
        for p in models:
            rows.append([name, p, f"{latency[p].median_ms:.2f}", f"{train[p].median_ms:.1f}"])
        rows.append([name, "same vs symmetric", f"{cost['latency_pct']:+.1f} %", f"{cost['train_step_pct']:+.1f} %"])
    bench.table(
        markdown_table(["model", "padding", "batch-1 latency ms (median)", "train step ms, batch 8 (median)"], rows),
    )
    return out


def explain_suite(bench: Benchmark) -> dict:
    """Explaining one image with the fused pair (--models, random weights): Grad-CAM (one forward
    and one backward of both members) beside the fused forward alone, timed side by side in
    interleaved rounds; then occlusion (16 px patches, stride 8) in images per second."""
    torch.manual_seed(0)
    members = [create_model(name, bench.num_classes).eval().to(bench.device) for name in bench.models]
    for name, model in zip(
        bench.models, members
    ):  # BiT zero-initialises its head: give every head values, so gradients are real
        torch.nn.init.normal_(model.get_submodule(get_spec(name).head).weight, std=0.05)
    pair = FusedPair(*members, alpha=0.5).eval()
    x = torch.randn(1, 3, bench.img_size, bench.img_size, device=bench.device)

    def forward() -> None:
        with torch.no_grad():
            pair(x)

    timed = profiling.time_interleaved(
        {"forward": forward, "grad_cam": lambda: fused_grad_cam(fused_pair_members(pair), [x, x])},
        bench.device,
        bench.warmup,
        bench.iters,
    )
    start = time.perf_counter()
    occlusion_images = 2
    occlusion(pair, x.repeat(occlusion_images, 1, 1, 1), torch.zeros(3), patch=16, stride=8)
    occlusion_rate = occlusion_images / (time.perf_counter() - start)
    ratio = timed["grad_cam"].median_ms / timed["forward"].median_ms
    rows = [
        [
            " + ".join(bench.models),
            bench.img_size,
            f"{timed['forward'].median_ms / 1000:.4f}",
            f"{timed['grad_cam'].median_ms / 1000:.4f}",
            f"{ratio:.2f}x",
            f"{occlusion_rate:.3f}",
        ]
    ]
    bench.table(
        markdown_table(
            [
                "pair",
                "px",
                "fused forward s/image",
                "Grad-CAM s/image (both members + fused)",
                "Grad-CAM / forward",
                "occlusion images/s",
            ],
            rows,
        ),
    )
    return {
        "forward_ms": timed["forward"].median_ms,
        "grad_cam_ms": timed["grad_cam"].median_ms,
        "ratio": ratio,
        "occlusion_images_per_s": occlusion_rate,
    }


def cpu_suite(bench: Benchmark) -> dict:
    """What makes CPU training fast here: the training step (--batch-size, --img-size) in fp32,
    channels-last, bf16 autocast and both, timed side by side in interleaved rounds; then the
    training loader alone (the demo's augmentation, the default set) with 0, 1 and 2 workers."""
    out, rows = {}, []
    variants = {
        "fp32": (False, False),
        "channels-last": (False, True),
        "bf16 autocast": (True, False),
        "bf16 + channels-last": (True, True),
    }
    for name in bench.models:
        steps = {}
        for variant, (bf16, channels_last) in variants.items():
            torch.manual_seed(0)
            steps[variant] = training_step(
                create_model(name, bench.num_classes), bench, bench.batch_size, bf16, channels_last
            )
        timed = profiling.time_interleaved(steps, bench.device, bench.warmup, bench.iters)
        for variant, latency in timed.items():
            rate = bench.batch_size * 1000.0 / latency.median_ms
            out[f"{name}, {variant}"] = rate
            rows.append(
                [
                    f"training step, {name}",
                    variant,
                    f"{rate:.0f}",
                    f"{timed['fp32'].median_ms / latency.median_ms:.2f}x",
                ]
            )
    samples = discover(ensure_default_data(None, DistributedContext()), check_images=False)
    dataset = ImageDataset(samples, np.arange(len(samples)), build(True, bench.img_size))
    loaders = {}
    for workers in (0, 1, 2):
        start, seen = time.perf_counter(), 0
        for images, _, _ in make_loader(dataset, bench.batch_size, train=True, num_workers=workers):
            seen += len(images)
        loaders[workers] = seen / (time.perf_counter() - start)
        out[f"loader, {workers} workers"] = loaders[workers]
        rows.append(
            [
                "training loader alone (one epoch of the default set)",
                f"{workers} workers",
                f"{loaders[workers]:.0f}",
                f"{loaders[workers] / loaders[0]:.2f}x",
            ]
        )
    bench.table(markdown_table(["what", "variant", "images/s", "vs the first"], rows))
    return out
