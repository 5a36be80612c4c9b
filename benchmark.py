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
import dataclasses
import sys
from pathlib import Path

import torch

from spermfuse import cli
from spermfuse.benchmarks import SUITES, Benchmark, run_suite
from spermfuse.benchmarks.speed import settings_for
from spermfuse.errors import ConfigError
from spermfuse.files import atomic_write_json, atomic_write_text
from spermfuse.models import list_models
from spermfuse.progress_line import round_counter
from spermfuse.runtime import DEVICE_HELP, device_description, resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.argument_parser(__doc__)
    p.add_argument(
        "--suite",
        choices=list(SUITES),
        default="models",
        help="what to measure (default models: parameters, FLOPs, latency; see the examples above)",
    )
    p.add_argument(
        "--models", nargs="+", default=["efficientnetv2_s", "resnet50v2"], help=f"two of {', '.join(list_models())}"
    )
    p.add_argument("--num-classes", type=int, default=18, help="classes of the models' heads (default 18)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
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


FLAGS = {f.name for f in dataclasses.fields(Benchmark)} - {"device", "scripts", "write", "progress", "markdown"}


def run(args) -> None:
    device = resolve_device(args.device)
    # The paper's 100 + 200 rounds take minutes per model on a CPU: a shorter default there.
    args.iters = args.iters if args.iters is not None else (200 if device.type == "cuda" else 20)
    args.warmup = args.warmup if args.warmup is not None else (100 if device.type == "cuda" else 5)
    for model in args.models:
        if model not in list_models():
            raise ConfigError(f"--models {model}: unknown; choose from {', '.join(list_models())}")
    bench = Benchmark(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Benchmark) if f.name in FLAGS},
        device=device,
        scripts=Path(__file__).parent,
        write=print,
        progress=round_counter,
    )
    settings_for(bench, bench.batch_size).check(device)
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
    results = run_suite(bench)
    if args.markdown and bench.markdown is not None:
        atomic_write_text(args.markdown, bench.markdown)
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
