"""Complexity and speed of the backbones and their fusion (the paper's Table 8, and more).

    python benchmark.py                                  # params, GFLOPs, batch-1 latency, FPS
    python benchmark.py --device cuda --amp on --channels-last
    python benchmark.py --device cuda --half --channels-last --cuda-graph   # fused pair ~ its slower member
    python benchmark.py --train                          # training images/s and memory, AMP vs fp32
    python benchmark.py --suite transforms               # own augmentation vs torchvision.transforms.v2
    python benchmark.py --suite loader                   # data loader alone vs the full training step
    python benchmark.py --suite timm                     # our ResNetV2 vs timm's resnetv2_50x1_bit
    python benchmark.py --suite fusion                   # grid search + full evaluation at the paper's size
    python benchmark.py --suite splits                   # folds with and without patient groups, 18,456 images
    python benchmark.py --suite ema                      # a training step with and without the weight EMA update
    python benchmark.py --suite export                   # the fused pair: eager vs torch.export program vs ONNX Runtime
    python benchmark.py --suite padding --models efficientnetv2_s   # TensorFlow "same" padding vs symmetric
    python benchmark.py --suite explain                  # Grad-CAM of the fused pair vs its forward; occlusion images/s
    python benchmark.py --suite guarantees --markdown docs/guarantees_benchmark.md   # manifests and locks vs the commands they guard
    python benchmark.py --suite promises --markdown docs/promises_benchmark.md       # certified referral and conformal sets at the paper's scale
    python benchmark.py --suite samples --markdown docs/samples_benchmark.md   # per-sample fractions on simulated patients (needs bash demo.sh)
    python benchmark.py --suite sample-report --models efficientnet_tiny resnetv2_tiny --img-size 64   # one 200-cell sample's report, end to end
    python benchmark.py --suite scale-out --rounds 3   # the tiny protocol: folds one after the other vs --fold-parallel (torchrun)
    python benchmark.py --suite cpu --models efficientnet_tiny resnetv2_tiny --img-size 64 --batch-size 32   # CPU speed-ups

Latency: median (p10/p90, mean) over --iters timed runs after --warmup untimed ones,
CUDA-synchronised on a GPU; FPS = 1000 / median ms. FLOPs: fvcore's convention, own counter.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spermfuse import cli, flops, profiling
from spermfuse.files import atomic_write_json, atomic_write_text
from spermfuse.errors import ConfigError
from spermfuse.fused_pair import FusedPair
from spermfuse.models import create_model, get_spec, list_models
from spermfuse.report import markdown_table
from spermfuse.runtime import device_description, resolve_device

PAPER = {  # RTX 5070 Ti, batch 1, 240 px (Table 8)
    "efficientnetv2_s": {"params_m": 20.20, "gflops": 3.39, "latency_ms": 10.82, "fps": 92.43},
    "resnet50v2": {"params_m": 23.54, "gflops": 4.95, "latency_ms": 6.54, "fps": 152.99},
    "fusion": {"params_m": 43.74, "gflops": 8.34, "latency_ms": 16.96, "fps": 58.95},
}
PAPER_PAIR = {"efficientnetv2_s", "resnet50v2"}  # the "fusion" row compares with the paper only for these
PAPER_AMP = {"efficientnetv2_s": "-46.6 % memory, +70.3 % speed", "resnet50v2": "~0 % memory, +17.4 % speed"}


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.argument_parser(__doc__)
    p.add_argument(
        "--suite",
        choices=[
            "models",
            "transforms",
            "loader",
            "timm",
            "fusion",
            "splits",
            "ema",
            "export",
            "padding",
            "explain",
            "cpu",
            "guarantees",
            "promises",
            "samples",
            "sample-report",
            "scale-out",
        ],
        default="models",
        help="what to measure (default models: parameters, FLOPs, latency; see the examples above)",
    )
    p.add_argument(
        "--models", nargs="+", default=["efficientnetv2_s", "resnet50v2"], help=f"two of {', '.join(list_models())}"
    )
    p.add_argument("--num-classes", type=int, default=18, help="classes of the models' heads (default 18)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--img-size", type=int, default=240, help="input size in px (default 240, the paper's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the latency runs (default 1, the paper's)")
    p.add_argument("--iters", type=int, help="timed rounds (default 200 on a GPU, as the paper; 20 on the CPU)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 100 on a GPU, as the paper; 5 on the CPU)")
    p.add_argument("--amp", choices=["on", "off"], default="off", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument(
        "--half", action="store_true", help="weights and input in fp16 (CUDA): no autocast casts at run time"
    )
    p.add_argument(
        "--cuda-graph", action="store_true", help="capture each model once as a CUDA graph and time its replays"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the models first")
    p.add_argument("--throughput", nargs="*", type=int, metavar="BATCH", help="also images/s at these batch sizes")
    p.add_argument("--train", action="store_true", help="training steps (batch 8): fp32 vs AMP")
    p.add_argument("--train-steps", type=int, default=20, help="--train: timed training steps (default 20)")
    p.add_argument("--data", type=Path, help="--suite transforms/loader: image folder (default: synthetic sperm18)")
    p.add_argument("--rounds", type=int, default=5, help="--suite guarantees: interleaved rounds (medians)")
    p.add_argument(
        "--logits-from",
        type=Path,
        default=Path("runs/demo/fusion"),
        help="--suite samples: a fusion (or model) folder whose fold*/test_logits.npz are the held-out cells",
    )
    p.add_argument("--simulated-samples", type=int, default=200, help="--suite samples: patients per row")
    p.add_argument("--boot", type=int, default=300, help="--suite samples: bootstrap replicates per interval")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--markdown",
        type=Path,
        help="--suite export/padding/explain/cpu/guarantees: also write its table here (for the README)",
    )
    return p.parse_args(argv)


def round_counter(done: int, rounds: int) -> None:
    """``round 40/200`` on an interactive terminal, silent otherwise."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  round {done}/{rounds}" + ("\n" if done == rounds else ""))
        sys.stderr.flush()


def build(name: str, args, device) -> torch.nn.Module:
    model = create_model(name, args.num_classes).eval().to(device)
    return torch.compile(model) if args.compile else model


def settings_for(args, batch_size: int) -> profiling.InferenceSettings:
    return profiling.InferenceSettings(
        batch_size, args.img_size, args.amp, args.half, args.channels_last, args.cuda_graph
    )


def models_suite(args, device) -> dict:
    """Each backbone, then the pair as the paper runs it (one member after the other) and
    with both members at once (two CUDA streams, or two CPU threads)."""
    models = {name: build(name, args, device) for name in args.models}
    candidates = dict(models)
    if len(models) == 2:
        candidates["fusion"] = FusedPair(*models.values())
        candidates["fusion_concurrent"] = FusedPair(*models.values(), concurrent=True)
    example = torch.randn(1, 3, args.img_size, args.img_size)
    results = {}
    for name, model in candidates.items():  # counted before --half / --channels-last convert the members
        results[name] = {
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": flops.count_flops(model.cpu(), example) / 1e9,
        }
    logging.info(
        "timing %s side by side, %d rounds after %d warm-up calls each ...",
        ", ".join(candidates),
        args.iters,
        args.warmup,
    )
    steps = {
        name: profiling.inference_step(model, device, settings_for(args, args.batch_size))
        for name, model in candidates.items()
    }
    latencies = profiling.time_interleaved(steps, device, args.warmup, args.iters, round_counter)
    rows = []
    for name, model in candidates.items():
        latency = latencies[name]
        entry = results[name] | vars(latency) | {"fps": latency.fps * args.batch_size}
        for batch in args.throughput or []:
            t = profiling.inference_latency(
                model, device, settings_for(args, batch), max(args.warmup // 10, 2), max(args.iters // 10, 5)
            )
            entry[f"throughput_b{batch}"] = batch * 1000.0 / t.median_ms
        results[name] = entry
        paper = PAPER.get(name, {}) if name in args.models or set(args.models) == PAPER_PAIR else {}
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
    print(markdown_table(header, rows))
    if len(models) == 2:
        slower = max(results[n]["median_ms"] for n in models)
        print(
            f"fused pair / slower member latency: {results['fusion']['median_ms'] / slower:.2f}x one after the other, "
            f"{results['fusion_concurrent']['median_ms'] / slower:.2f}x concurrent (paper: {16.96 / 10.82:.2f}x)\n"
        )
    if args.train:
        results["training"] = training_suite(args, device)
    return results


def training_suite(args, device) -> dict:
    out, rows = {}, []
    for name in args.models:
        costs = {}
        for amp in ("off", "on"):
            model = create_model(name, args.num_classes)
            costs[amp] = profiling.training_cost(
                model, device, 8, args.img_size, amp, args.train_steps, 3, args.num_classes
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
    memory_kind = "peak CUDA MB" if device.type == "cuda" else "peak RSS MB (process, cumulative)"
    print(
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


def sample_images(args, count: int = 200):
    from spermfuse import synthetic
    from spermfuse.data import discover, load_rgb

    if args.data is not None:
        samples = discover(args.data)
        return [load_rgb(samples.root / p) for p in samples.paths[:count]]
    classes = synthetic.SPERM18_CLASSES
    return [synthetic.render("sperm18", classes[i % len(classes)], 42, i)[0] for i in range(count)]


def transforms_suite(args, device) -> dict:
    """Own train pipeline vs the equivalent torchvision.transforms.v2 one, same 200 images."""
    from torchvision.transforms import v2

    from spermfuse.transforms import IMAGENET_MEAN, IMAGENET_STD, PAD_COLOR, build

    images = sample_images(args)
    size = args.img_size
    ours = build(True, size)

    class LetterboxV2(torch.nn.Module):  # v2 has no letterbox: resize longer side + centred pad
        def forward(self, img):
            h, w = img.shape[-2:]
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            img = v2.functional.resize(img, [nh, nw], antialias=True)
            left, top = (size - nw) // 2, (size - nh) // 2
            return v2.functional.pad(img, [left, top, size - nw - left, size - nh - top], fill=list(PAD_COLOR))

    theirs = v2.Compose(
        [
            v2.PILToTensor(),
            LetterboxV2(),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.3),
            v2.RandomRotation(15, fill=list(PAD_COLOR)),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.3),
            v2.RandomApply([v2.GaussianNoise(sigma=0.04)], p=0.2),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    rng = np.random.default_rng(0)
    times = {"spermfuse": [], "torchvision_v2": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside DataLoader workers, where augmentation runs
    for _ in range(5):  # alternate to share the machine's noise fairly
        start = time.perf_counter()
        for image in images:
            ours(image, rng)
        times["spermfuse"].append((time.perf_counter() - start) / len(images) * 1000)
        start = time.perf_counter()
        for image in images:
            theirs(image)
        times["torchvision_v2"].append((time.perf_counter() - start) / len(images) * 1000)
    torch.set_num_threads(threads)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    print(
        markdown_table(
            ["pipeline", "median ms / image", "images / s"],
            [[k, f"{v:.3f}", f"{1000 / v:.0f}"] for k, v in medians.items()],
        )
    )
    print(
        f"torchvision v2 / spermfuse time ratio: {medians['torchvision_v2'] / medians['spermfuse']:.2f}x ({len(images)} images, {size} px, 5 rounds, 1 thread)\n"
    )
    return {"ms_per_image": medians, "rounds": times}


def loader_suite(args, device) -> dict:
    """Images/s of the data loader alone and of the full training step (resnet50v2, batch 8)."""
    import tempfile

    from spermfuse import data, synthetic
    from spermfuse.transforms import build

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or synthetic.generate(Path(tmp) / "s", "sperm18", per_class=12)
        samples = data.discover(root)
        dataset = data.ImageDataset(samples, np.arange(len(samples)), build(True, args.img_size))
        results = {}
        for workers in (0, 2):
            loader = data.make_loader(dataset, 8, train=True, num_workers=workers)
            start, seen = time.perf_counter(), 0
            for images, _, _ in loader:
                seen += len(images)
            results[f"loader_workers{workers}"] = seen / (time.perf_counter() - start)
        model = create_model(args.models[-1], len(samples.classes))
        cost = profiling.training_cost(
            model, device, 8, args.img_size, args.amp, args.train_steps, 3, len(samples.classes)
        )
        results[f"train_step_{args.models[-1]}"] = cost.images_per_second
    print(markdown_table(["what", "images / s"], [[k, f"{v:.1f}"] for k, v in results.items()]))
    return results


def timm_suite(args, device) -> dict:
    """Our resnet50v2 vs timm's resnetv2_50x1_bit: training step (batch 8) and batch-1 latency."""
    import timm

    results, rows = {}, []
    for _ in range(3):  # interleave the two implementations
        for name in ("spermfuse", "timm"):
            make = (
                (lambda: create_model("resnet50v2", args.num_classes))
                if name == "spermfuse"
                else (lambda: timm.create_model("resnetv2_50x1_bit", num_classes=args.num_classes))
            )
            train = profiling.training_cost(
                make(), device, 8, args.img_size, "off", args.train_steps, 3, args.num_classes
            )
            latency = profiling.inference_latency(
                make(), device, profiling.InferenceSettings(img_size=args.img_size), args.warmup, args.iters
            )
            results.setdefault(name, {"train_ms": [], "latency_ms": []})
            results[name]["train_ms"].append(train.median_step_ms)
            results[name]["latency_ms"].append(latency.median_ms)
    for name, r in results.items():
        rows.append([name, f"{np.median(r['train_ms']):.1f}", f"{np.median(r['latency_ms']):.2f}"])
    print(markdown_table(["implementation", "train step ms (batch 8)", "latency ms (batch 1)"], rows))
    ratio_train = np.median(results["timm"]["train_ms"]) / np.median(results["spermfuse"]["train_ms"])
    ratio_latency = np.median(results["timm"]["latency_ms"]) / np.median(results["spermfuse"]["latency_ms"])
    print(
        f"timm / spermfuse time: training step {ratio_train:.2f}x, batch-1 latency {ratio_latency:.2f}x (>1: ours faster)\n"
    )
    return results | {"timm_over_ours_train": ratio_train, "timm_over_ours_latency": ratio_latency}


def export_suite(args, device) -> dict:
    """The fused pair (--models, random weights, one fold, a = 0.5) as fuse.py --export writes it:
    eager PyTorch, the torch.export program and ONNX Runtime, batch-1 latency and batch-32
    throughput, timed side by side in interleaved rounds (--warmup, --iters) on the CPU."""
    import tempfile

    from spermfuse.export import export_onnx, export_program, onnx_available
    from spermfuse.fused_model import Classifier, FusedModel
    from spermfuse.transforms import PipelineSpec

    pair = [
        Classifier(
            create_model(name, args.num_classes).eval(),
            PipelineSpec(args.img_size),
            [str(c) for c in range(args.num_classes)],
            Path(name),
        )
        for name in args.models
    ]
    eager = FusedModel([pair], [[0.5, 0.5]]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.pt2").write_bytes(export_program(eager, args.img_size))
        program = torch.export.load(str(Path(tmp) / "model.pt2")).module()
        concurrent = FusedPair(pair[0].model, pair[1].model, alpha=0.5, concurrent=True).eval()
        runners = {
            "eager": eager,
            "eager FusedPair, concurrent (float input)": lambda x: concurrent(x.float()),
            "torch.export (.pt2)": program,
        }
        if onnx_available():
            import onnxruntime

            export_onnx(eager, args.img_size, Path(tmp) / "model.onnx")
            session = onnxruntime.InferenceSession(str(Path(tmp) / "model.onnx"))
            runners["ONNX Runtime"] = lambda x: session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        out, rows = {}, []
        for batch in (1, 32):
            x = torch.randint(0, 256, (batch, 3, args.img_size, args.img_size), dtype=torch.uint8)
            calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
            with torch.no_grad():
                timed = profiling.time_interleaved(calls, device, args.warmup, args.iters)
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
    print_table(args, device, markdown_table(["runtime", "batch", "median ms", "images/s", "speed vs eager"], rows))
    return out


def print_table(args, device, table: str, flags: str | None = None) -> None:
    """Print a suite's table; with --markdown also write it, with the command and machine, for the README
    (``flags``: the suite's own, when the model timing flags do not apply to it)."""
    print(table)
    if args.markdown:
        command = f"benchmark.py --suite {args.suite} " + (
            flags
            or f"--models {' '.join(args.models)} --img-size {args.img_size} --batch-size {args.batch_size} "
            f"--warmup {args.warmup} --iters {args.iters}"
        )
        atomic_write_text(
            args.markdown,
            f"<!-- written by {command}; {device_description(device)}; torch {torch.__version__} -->\n\n" + table,
        )


def training_step(
    model: torch.nn.Module, device, args, batch: int = 8, bf16: bool = False, channels_last: bool = False
) -> Callable[[], None]:
    """One AdamW step of ``model`` on a fixed random batch (forward, backward, update), optionally
    under bf16 autocast and in channels-last memory format."""
    model.train().to(device)
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, args.num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def ema_suite(args, device) -> dict:
    """A full training step (batch 8, AdamW) with and without ``--ema``'s update after it, timed
    side by side in interleaved rounds (--warmup, --iters) on the same model and batch."""
    from spermfuse.ema import WeightEMA

    out, rows = {}, []
    for name in args.models:
        model = create_model(name, args.num_classes)
        step, ema = training_step(model, device, args), WeightEMA(model, 0.999)

        def step_with_ema() -> None:
            step()
            ema.update(model)

        timed = profiling.time_interleaved({"plain": step, "ema": step_with_ema}, device, args.warmup, args.iters)
        overhead = 100.0 * (timed["ema"].median_ms / timed["plain"].median_ms - 1.0)
        out[name] = {"plain_ms": timed["plain"].median_ms, "ema_ms": timed["ema"].median_ms, "overhead_pct": overhead}
        rows.append([name, f"{timed['plain'].median_ms:.1f}", f"{timed['ema'].median_ms:.1f}", f"{overhead:+.1f} %"])
    print(markdown_table(["model", "step ms (median)", "step + EMA update ms", "overhead"], rows))
    return out


def padding_suite(args, device) -> dict:
    """TensorFlow "same" padding against symmetric padding, the same weights: batch-1 latency and
    a training step (batch 8), each pair timed side by side in interleaved rounds."""
    out, rows = {}, []
    for name in [m for m in args.models if get_spec(m).family == "efficientnet"]:
        torch.manual_seed(0)
        models = {"symmetric": create_model(name, args.num_classes)}
        models["same"] = create_model(name, args.num_classes, padding="same")
        models["same"].load_state_dict(models["symmetric"].state_dict())
        latency = profiling.time_interleaved(
            {
                p: profiling.inference_step(m.eval().to(device), device, settings_for(args, 1))
                for p, m in models.items()
            },
            device,
            args.warmup,
            args.iters,
        )
        steps = {p: training_step(m, device, args) for p, m in models.items()}
        train = profiling.time_interleaved(steps, device, max(args.warmup // 10, 2), max(args.iters // 10, 10))
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
    print_table(
        args,
        device,
        markdown_table(["model", "padding", "batch-1 latency ms (median)", "train step ms, batch 8 (median)"], rows),
    )
    return out


def explain_suite(args, device) -> dict:
    """Explaining one image with the fused pair (--models, random weights): Grad-CAM (one forward
    and one backward of both members) beside the fused forward alone, timed side by side in
    interleaved rounds; then occlusion (16 px patches, stride 8) in images per second."""
    from spermfuse.explain import fused_grad_cam, fused_pair_members, occlusion

    torch.manual_seed(0)
    members = [create_model(name, args.num_classes).eval().to(device) for name in args.models]
    for name, model in zip(
        args.models, members
    ):  # BiT zero-initialises its head: give every head values, so gradients are real
        torch.nn.init.normal_(model.get_submodule(get_spec(name).head).weight, std=0.05)
    pair = FusedPair(*members, alpha=0.5).eval()
    x = torch.randn(1, 3, args.img_size, args.img_size, device=device)

    def forward() -> None:
        with torch.no_grad():
            pair(x)

    timed = profiling.time_interleaved(
        {"forward": forward, "grad_cam": lambda: fused_grad_cam(fused_pair_members(pair), [x, x])},
        device,
        args.warmup,
        args.iters,
    )
    start = time.perf_counter()
    occlusion_images = 2
    occlusion(pair, x.repeat(occlusion_images, 1, 1, 1), torch.zeros(3), patch=16, stride=8)
    occlusion_rate = occlusion_images / (time.perf_counter() - start)
    ratio = timed["grad_cam"].median_ms / timed["forward"].median_ms
    rows = [
        [
            " + ".join(args.models),
            args.img_size,
            f"{timed['forward'].median_ms / 1000:.4f}",
            f"{timed['grad_cam'].median_ms / 1000:.4f}",
            f"{ratio:.2f}x",
            f"{occlusion_rate:.3f}",
        ]
    ]
    print_table(
        args,
        device,
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


def cpu_suite(args, device) -> dict:
    """What makes CPU training fast here: the training step (--batch-size, --img-size) in fp32,
    channels-last, bf16 autocast and both, timed side by side in interleaved rounds; then the
    training loader alone (the demo's augmentation, the default set) with 0, 1 and 2 workers."""
    from spermfuse import data
    from spermfuse.cache import ensure_default_data
    from spermfuse.distributed import DistributedContext
    from spermfuse.transforms import build

    out, rows = {}, []
    variants = {
        "fp32": (False, False),
        "channels-last": (False, True),
        "bf16 autocast": (True, False),
        "bf16 + channels-last": (True, True),
    }
    for name in args.models:
        steps = {}
        for variant, (bf16, channels_last) in variants.items():
            torch.manual_seed(0)
            steps[variant] = training_step(
                create_model(name, args.num_classes), device, args, args.batch_size, bf16, channels_last
            )
        timed = profiling.time_interleaved(steps, device, args.warmup, args.iters)
        for variant, latency in timed.items():
            rate = args.batch_size * 1000.0 / latency.median_ms
            out[f"{name}, {variant}"] = rate
            rows.append(
                [
                    f"training step, {name}",
                    variant,
                    f"{rate:.0f}",
                    f"{timed['fp32'].median_ms / latency.median_ms:.2f}x",
                ]
            )
    samples = data.discover(ensure_default_data(None, DistributedContext()), check_images=False)
    dataset = data.ImageDataset(samples, np.arange(len(samples)), build(True, args.img_size))
    loaders = {}
    for workers in (0, 1, 2):
        start, seen = time.perf_counter(), 0
        for images, _, _ in data.make_loader(dataset, args.batch_size, train=True, num_workers=workers):
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
    print_table(args, device, markdown_table(["what", "variant", "images/s", "vs the first"], rows))
    return out


def splits_suite(args, device) -> dict:
    """make_folds and one fold's split at the paper's size (18,456 images, 18 classes), by class
    alone and with 300 patient groups; medians of 5 runs after one warm-up (scikit-learn's import)."""
    from spermfuse import splits

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 18, 18456)
    groups = np.array([f"patient{g:03d}" for g in rng.integers(0, 300, len(labels))])
    classes = [f"class{c:02d}" for c in range(18)]

    def median_seconds(step) -> float:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
        return float(np.median(samples))

    times = {}
    for name, given in (("by class", None), ("by class, 300 groups", groups)):
        folds = splits.make_folds(labels, classes, 5, 42, given)  # warm-up: scikit-learn's import on the first
        times[f"make_folds, {name}"] = median_seconds(lambda: splits.make_folds(labels, classes, 5, 42, given))
        times[f"fold_split (+ leakage check), {name}"] = median_seconds(
            lambda: splits.fold_split(folds, labels, 1, 0.1, 42, given)
        )
    print(markdown_table(["step (18,456 images, 5 folds)", "median s"], [[k, f"{v:.3f}"] for k, v in times.items()]))
    return times


def paper_size_runs(runs: Path) -> Path:
    """Made-up logits of the paper's size under ``runs``: 18,456 test samples in 5 folds, 18
    classes, efficientnetv2_s and resnet50v2, and a validation set per fold."""
    rng = np.random.default_rng(0)
    classes = np.array([f"class{c:02d}" for c in range(18)])

    def write(folder: Path, split: str, part: np.ndarray, labels: np.ndarray, arch: str, fold: int) -> None:
        logits = (np.eye(18)[labels] * 2 + rng.normal(0, 1.5, (len(part), 18))).astype(np.float32)
        np.savez(
            folder / f"{split}_logits.npz",
            logits=logits,
            labels=labels,
            paths=np.array([f"{split}{i}.png" for i in part]),
            classes=classes,
            arch=np.array(arch),
            fold=np.array(fold),
        )

    for k, part in enumerate(np.array_split(np.arange(18456), 5), start=1):
        val = part[: len(part) // 4]  # about the 10 % validation share of 14,765 training images
        test_labels, val_labels = rng.integers(0, 18, len(part)), rng.integers(0, 18, len(val))
        for arch in ("efficientnetv2_s", "resnet50v2"):
            folder = runs / arch / f"fold{k}"
            folder.mkdir(parents=True)
            write(folder, "test", part, test_labels, arch, k)
            write(folder, "val", val, val_labels, arch, k)
    return runs


def fusion_suite(args, device) -> dict:
    """fuse.py --grid and evaluate.py (with figures) on made-up logits of the paper's size
    (:func:`paper_size_runs`). Each command runs with and without what calibration and
    referral add, side by side."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = paper_size_runs(Path(tmp) / "runs")
        evaluate = ["evaluate.py", "--runs", str(runs), "--reports", str(Path(tmp) / "r")]
        commands = [
            ("fuse --grid (11 weights x 5 folds)", ["fuse.py", "--grid", "--runs", str(runs)]),
            (
                "fuse --grid --select val --calibrate --refer-accuracy 0.9 --sets-alpha 0.1",
                [
                    "fuse.py",
                    "--grid",
                    "--runs",
                    str(runs),
                    "--select",
                    "val",
                    "--calibrate",
                    "--refer-accuracy",
                    "0.9",
                    "--sets-alpha",
                    "0.1",
                ],
            ),
            ("evaluate (5 models, tables + figures, with calibration)", evaluate),
        ]
        times = {name: [] for name, _ in commands}
        times["evaluate (5 models, without validation logits: no temperatures)"] = []
        for _ in range(3):  # interleaved rounds, so the with/without pairs share the machine's noise
            for name, command in commands:
                times[name].append(run_seconds(command))
            hidden = [p.rename(p.with_suffix(".hidden")) for p in runs.rglob("*val_logits.npz")]
            times["evaluate (5 models, without validation logits: no temperatures)"].append(run_seconds(evaluate))
            for p in hidden:
                p.rename(p.with_suffix(".npz"))
            shutil.rmtree(Path(tmp) / "r")
    medians = {name: float(np.median(values)) for name, values in times.items()}
    print(
        markdown_table(
            ["command (18,456 x 18 logits, 5 folds)", "median seconds (incl. interpreter start)"],
            [[k, f"{v:.1f}"] for k, v in medians.items()],
        )
    )
    return medians


def guarantees_suite(args, device) -> dict:
    """What the file guarantees cost (docs/GUARANTEES.md): the fusion folder's manifest (written
    once, checked by every reader) against ``fuse.py --grid`` at the paper's size, and the run
    folder's lock and --overwrite's move-aside against a tiny training run. In one process,
    interleaved rounds, medians."""
    import tempfile

    import fuse
    from spermfuse import synthetic, trainer
    from spermfuse.config import preset_config
    from spermfuse.lock import LOCK_NAME, FolderLock
    from spermfuse.output_folder import discard, move_aside, verify_folder, write_manifest

    def seconds(step: Callable[[], object]) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {
        key: [] for key in ("grid", "grid command", "manifest", "verify", "train", "train command", "lock", "aside")
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs = paper_size_runs(Path(tmp) / "runs")
        data = synthetic.generate(Path(tmp) / "data", "hushem4", seed=0, per_class=8)
        config = preset_config(
            "tiny", arch="efficientnet_tiny", data=str(data), out=str(Path(tmp) / "tiny"), device="cpu"
        )
        train_command = [
            "train.py",
            "--preset",
            "tiny",
            "--arch",
            config.arch,
            "--data",
            config.data,
            "--out",
            config.out,
            "--device",
            "cpu",
            "--overwrite",
        ]
        for _ in range(args.rounds):
            times["grid"].append(seconds(lambda: fuse.main(["--grid", "--runs", str(runs)])))
            times["grid command"].append(run_seconds(["fuse.py", "--grid", "--runs", str(runs)]))
            times["manifest"].append(seconds(lambda: write_manifest(runs / "fusion")))
            times["verify"].append(seconds(lambda: verify_folder(runs / "fusion")))
            times["train"].append(seconds(lambda: trainer.train_fold(replace(config, overwrite=True))))
            times["train command"].append(run_seconds(train_command))
            times["lock"].append(
                seconds(
                    lambda: (
                        FolderLock(config.run_dir(), "benchmark").acquire() or (config.run_dir() / LOCK_NAME).unlink()
                    )
                )
            )
            times["aside"].append(seconds(lambda: discard(move_aside(config.run_dir(), keep=set()))))
            trainer.train_fold(replace(config, overwrite=True))  # the next round's move-aside has a run to move
    medians = {name: float(np.median(values)) for name, values in times.items()}
    unit = medians["manifest"] + medians["verify"]
    run_folder = medians["lock"] + medians["aside"]

    def share(cost: float, of: str) -> str:
        return f"{100 * cost / medians[of]:.2f} % of {medians[of]:.3f} s"

    rows = [
        [
            "fuse.py --grid, 18,456 x 18 logits, 5 folds: manifest written once + checked once",
            f"{unit:.4f}",
            share(unit, "grid"),
            share(unit, "grid command"),
        ],
        [
            "train.py --preset tiny, one fold (hushem4, 8 per class): lock + --overwrite's move-aside",
            f"{run_folder:.4f}",
            share(run_folder, "train"),
            share(run_folder, "train command"),
        ],
    ]
    print_table(
        args,
        device,
        markdown_table(
            ["guard", "median s", "share of the work in process", "share of the command (python ..., incl. start-up)"],
            rows,
        ),
    )
    return medians | {
        "unit_share_of_grid": unit / medians["grid"],
        "run_folder_share_of_tiny_run": run_folder / medians["train"],
    }


def promises_suite(args, device) -> dict:
    """The certified referral and the conformal sets at the paper's scale, on a simulated model
    that is calibrated by construction (18 classes, each cell's probabilities from a Dirichlet and
    its label drawn from them, about 70 % top-1): 5 folds of 1,500 calibration and 3,691 test cells.
    Per fold and pooled: the certified threshold, accepted share and accuracy with its interval,
    set coverage and size; and the seconds certification and set calibration take on 5 folds of
    18,456 x 18 probabilities (--rounds, medians)."""
    from spermfuse.conformal import calibrate_sets, predict_sets, set_metrics
    from spermfuse.selective import accepted_accuracy, certify_threshold

    rng = np.random.default_rng(0)

    def cells(n: int) -> tuple[np.ndarray, np.ndarray]:
        probabilities = rng.dirichlet(np.full(18, 0.04), n)
        return probabilities, (probabilities.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).clip(max=17)

    rows, covered, accepted_all, correct_all = [], [], [], []
    for fold in range(1, 6):
        (pc, yc), (pt, yt) = cells(1500), cells(3691)
        certificate = certify_threshold(pc.max(axis=1), pc.argmax(axis=1) == yc, 0.9, 0.1)
        outcome = accepted_accuracy(pt.max(axis=1), pt.argmax(axis=1) == yt, certificate.threshold)
        sets = set_metrics(
            predict_sets(pt, calibrate_sets(pc, yc, 0.1, "aps", seed=fold)), yt, [str(c) for c in range(18)]
        )
        rows.append(
            [
                fold,
                f"{certificate.threshold:.4f}",
                f"{1 - outcome['referred_share']:.3f}",
                f"{outcome['accepted_accuracy']:.4f}",
                f"[{outcome['interval'][0]:.4f}, {outcome['interval'][1]:.4f}]",
                f"{sets['coverage']:.4f}",
                f"{sets['mean_size']:.2f}",
            ]
        )
        accepted_all.append(pt.max(axis=1) >= certificate.threshold)
        correct_all.append(pt.argmax(axis=1) == yt)
        covered.append((sets["coverage"], sets["mean_size"]))
    pooled = accepted_accuracy(np.concatenate(accepted_all).astype(float), np.concatenate(correct_all), 0.5)
    rows.append(
        [
            "pooled",
            "",
            f"{1 - pooled['referred_share']:.3f}",
            f"{pooled['accepted_accuracy']:.4f}",
            f"[{pooled['interval'][0]:.4f}, {pooled['interval'][1]:.4f}]",
            f"{np.mean([c for c, _ in covered]):.4f}",
            f"{np.mean([m for _, m in covered]):.2f}",
        ]
    )
    probabilities, labels = cells(18456)

    def certify_and_calibrate() -> None:
        for _ in range(5):
            certify_threshold(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels, 0.9, 0.1)
            predict_sets(probabilities, calibrate_sets(probabilities, labels, 0.1, "aps"))

    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        certify_and_calibrate()
        seconds.append(time.perf_counter() - start)
    table = markdown_table(
        [
            "fold",
            "certified threshold (TAU 0.9, delta 0.1)",
            "accepted share",
            "accepted accuracy",
            "95 % interval",
            "set coverage (alpha 0.1, aps)",
            "mean set size",
        ],
        rows,
    )
    timing = f"\nCertification and APS set calibration + prediction on 5 x 18,456 x 18 probabilities: median {np.median(seconds):.2f} s over {args.rounds} rounds.\n"
    print_table(args, device, table + timing)
    return {"seconds": float(np.median(seconds)), "pooled_accepted_accuracy": pooled["accepted_accuracy"]}


def samples_suite(args, device) -> dict:
    """quantify.py's methods on simulated patients (sample_simulation.py): samples of 200 cells drawn
    from the held-out cells of --logits-from, the confusion from the other half (or 300 of them);
    then the seconds one 200-cell sample's estimate takes (acc, --boot replicates, medians)."""
    from spermfuse.metrics import confusion_counts
    from spermfuse.quantify import class_fractions
    from spermfuse.run_folder import load_fold_sets, pooled
    from spermfuse.sample_simulation import SimulationSetting, coverage_table
    from spermfuse.synthetic import MORPHOLOGY_GROUP

    sets = load_fold_sets(args.logits_from)
    labels, logits = pooled(sets)
    classes = sets[0].classes
    settings = [
        SimulationSetting(method, cells, samples=args.simulated_samples, n_boot=args.boot)
        for method in ("cc", "acc", "pcc", "em")
        for cells in (None, 300)
    ]
    table, results = coverage_table(logits, labels, classes, MORPHOLOGY_GROUP, settings)
    confusion = confusion_counts(labels, logits.argmax(axis=1), len(classes))
    seconds = []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        class_fractions(
            logits[:200].argmax(axis=1), confusion, classes, n_boot=2000, seed=round_, groups=MORPHOLOGY_GROUP
        )
        seconds.append(time.perf_counter() - start)
    source = f"{len(labels)} held-out cells of {args.logits_from} ({len(sets)} folds)"
    timing = (
        f"\nHeld-out cells: {source}; {args.simulated_samples} simulated patients of 200 cells per row, "
        f"{args.boot} bootstrap replicates per interval. One sample's acc estimate with 2,000 replicates: "
        f"median {np.median(seconds):.2f} s over {args.rounds} rounds.\n"
    )
    flags = f"--logits-from {args.logits_from} --simulated-samples {args.simulated_samples} --boot {args.boot} --rounds {args.rounds}"
    print_table(args, device, table + timing, flags)
    return {"rows": results, "estimate_seconds": float(np.median(seconds))}


def sample_report_suite(args, device) -> dict:
    """The seconds from a folder of 200 cell images to its sample report (--models, random weights,
    one fold, a = 0.5): read and letterbox the images, the fused probabilities (eager, or the ONNX
    Runtime session of the exported graph), the acc estimate with 2,000 replicates and the page
    with its two figures. Medians of --rounds rounds per runtime, interleaved."""
    import tempfile

    from spermfuse import synthetic
    from spermfuse.data import load_rgb
    from spermfuse.export import export_onnx, onnx_available
    from spermfuse.fused_model import Classifier, FusedModel
    from spermfuse.inference import fused_probabilities, list_images
    from spermfuse.sample_report import (
        HeldOutConfusion,
        Provenance,
        SampleSettings,
        estimate_samples,
        split_samples,
        write_sample_pages,
    )
    from spermfuse.transforms import PipelineSpec, from_spec

    classes = list(synthetic.SPERM18_CLASSES)
    spec = PipelineSpec(args.img_size)
    pair = [Classifier(create_model(name, len(classes)).eval(), spec, classes, Path(name)) for name in args.models]
    held_out = HeldOutConfusion(np.eye(len(classes)) * 40 + 2, classes, "a made-up confusion (timing only)")
    settings = SampleSettings(groups=dict(synthetic.MORPHOLOGY_GROUP))
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic.generate(Path(tmp) / "cells", "sperm18", seed=0, per_class=12)
        (Path(tmp) / "samples" / "patient").mkdir(parents=True)
        for path in list_images(data)[:200]:
            (Path(tmp) / "samples" / "patient" / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
        root = Path(tmp) / "samples"
        (Path(tmp) / "fusion.json").write_text("{}")
        provenance = Provenance(list(args.models), 1, Path(tmp) / "fusion.json", held_out.source)
        pipeline = from_spec(spec)

        def onnx_probabilities(session, images):
            batches = []
            for start in range(0, len(images), 16):
                letterboxed = [
                    np.asarray(pipeline.geometry(load_rgb(p), np.random.default_rng(0)))
                    for p in images[start : start + 16]
                ]
                batch = np.stack(letterboxed).transpose(0, 3, 1, 2).copy()
                batches.append(session.run(None, {session.get_inputs()[0].name: batch})[0])
            return np.concatenate(batches)

        def report(probabilities_of) -> None:
            images = list_images(root)
            samples = split_samples(root, images)
            probabilities = probabilities_of(images)
            estimate_samples(samples, probabilities, held_out, settings)
            write_sample_pages(Path(tmp) / "report", samples, images, probabilities, classes, settings, provenance)

        runners = {"eager": lambda images: fused_probabilities(images, [pair], [[0.5, 0.5]])}
        if onnx_available():
            import onnxruntime

            export_onnx(FusedModel([pair], [[0.5, 0.5]]).eval(), args.img_size, Path(tmp) / "model.onnx")
            session = onnxruntime.InferenceSession(str(Path(tmp) / "model.onnx"))
            runners["ONNX Runtime"] = lambda images: onnx_probabilities(session, images)
        seconds = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                start = time.perf_counter()
                report(runner)
                seconds[name].append(time.perf_counter() - start)
    rows = [[name, f"{np.median(s):.2f}", f"{min(s):.2f}", f"{max(s):.2f}"] for name, s in seconds.items()]
    title = f"One 200-cell sample report: {' + '.join(args.models)} at {args.img_size} px, {torch.get_num_threads()} threads, {args.rounds} rounds\n\n"
    flags = f"--models {' '.join(args.models)} --img-size {args.img_size} --rounds {args.rounds}"
    print_table(args, device, title + markdown_table(["runtime", "median s", "fastest s", "slowest s"], rows), flags)
    return {name: float(np.median(s)) for name, s in seconds.items()}


def scale_out_suite(args, device) -> dict:
    """The wall time of training --models' first architecture on both folds of the tiny preset
    (10 epochs, 6 synthetic images a class): one fold after the other with 2 and with 1 CPU
    thread, and the two folds at once under torchrun --fold-parallel (2 processes, 1 thread each,
    what torchrun sets). Medians of --rounds rounds, interleaved."""
    import os
    import subprocess
    import tempfile

    from spermfuse import synthetic

    arch = args.models[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic.generate(Path(tmp) / "data", "sperm18", seed=42, per_class=6)
        flags = ["--preset", "tiny", "--epochs", "10", "--early-stopping", "10", "--data", str(data), "--arch", arch]
        flags += ["--fold", "all", "--device", "cpu"]
        variants = {
            "sequential, 2 threads": ("2", [sys.executable, "train.py"]),
            "sequential, 1 thread": ("1", [sys.executable, "train.py"]),
            "--fold-parallel, 2 processes x 1 thread": (
                "1",
                [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "train.py", "--fold-parallel"],
            ),
        }
        seconds = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for number, (name, (threads, launcher)) in enumerate(variants.items()):
                out = Path(tmp) / f"runs{round_}_{number}"
                environment = {**os.environ, "OMP_NUM_THREADS": threads}
                start = time.perf_counter()
                subprocess.run(
                    [*launcher, *flags, "--out", str(out)],
                    check=True,
                    capture_output=True,
                    env=environment,
                    cwd=Path(__file__).parent,
                )
                seconds[name].append(time.perf_counter() - start)
    base = np.median(seconds["sequential, 2 threads"])
    rows = [[name, f"{np.median(s):.1f}", f"{base / np.median(s):.2f}x"] for name, s in seconds.items()]
    title = f"The tiny protocol ({arch}, 2 folds x 10 epochs, 108 images, 32 px) on {os.cpu_count()} CPU cores, {args.rounds} rounds\n\n"
    print_table(
        args,
        device,
        title + markdown_table(["how", "median s", "speed vs sequential, 2 threads"], rows),
        f"--models {arch} --rounds {args.rounds}",
    )
    return {name: float(np.median(s)) for name, s in seconds.items()}


def run_seconds(command: list[str]) -> float:
    import subprocess

    start = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, capture_output=True, cwd=Path(__file__).parent)
    return time.perf_counter() - start


SUITES = {
    "models": models_suite,
    "transforms": transforms_suite,
    "loader": loader_suite,
    "timm": timm_suite,
    "fusion": fusion_suite,
    "splits": splits_suite,
    "ema": ema_suite,
    "export": export_suite,
    "padding": padding_suite,
    "explain": explain_suite,
    "cpu": cpu_suite,
    "guarantees": guarantees_suite,
    "promises": promises_suite,
    "samples": samples_suite,
    "sample-report": sample_report_suite,
    "scale-out": scale_out_suite,
}


def run(args) -> None:
    device = resolve_device(args.device)
    # The paper's 100 + 200 rounds take minutes per model on a CPU: a shorter default there.
    args.iters = args.iters if args.iters is not None else (200 if device.type == "cuda" else 20)
    args.warmup = args.warmup if args.warmup is not None else (100 if device.type == "cuda" else 5)
    for model in args.models:
        if model not in list_models():
            raise ConfigError(f"--models {model}: unknown; choose from {', '.join(list_models())}")
    settings_for(args, args.batch_size).check(device)
    dtype = (
        "fp16 weights"
        if args.half
        else {"on": "fp16 autocast" if device.type == "cuda" else "bf16 autocast", "off": "fp32"}[args.amp]
    )
    print(
        f"machine: {device_description(device)} | torch {torch.__version__} | {dtype}"
        f"{' | channels_last' if args.channels_last else ''}{' | CUDA graph' if args.cuda_graph else ''} | batch {args.batch_size} | {args.img_size} px"
        f"{' | numbers measured on the CPU, not comparable to the paper GPU figures' if device.type == 'cpu' else ''}\n"
    )
    results = SUITES[args.suite](args, device)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "device": device_description(device),
                "torch": torch.__version__,
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
            },
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
