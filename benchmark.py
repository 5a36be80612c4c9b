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
    python benchmark.py --suite int8-profile --batch-size 16   # each member's int8 time by kind of node (ONNX Runtime)
    python benchmark.py --suite padding --models efficientnetv2_s   # TensorFlow "same" padding vs symmetric
    python benchmark.py --suite explain                  # Grad-CAM of the fused pair vs its forward; occlusion images/s
    python benchmark.py --suite guarantees --markdown docs/guarantees_benchmark.md   # manifests and locks vs the commands they guard
    python benchmark.py --suite promises --markdown docs/promises_benchmark.md       # certified referral and conformal sets at the paper's scale
    python benchmark.py --suite referral --markdown docs/referral_benchmark.md       # each referral certificate: failure rate and cells accepted, simulated
    python benchmark.py --suite samples --markdown docs/samples_benchmark.md   # per-sample fractions on simulated patients (needs bash demo.sh)
    python benchmark.py --suite sample-report --models efficientnet_tiny resnetv2_tiny --img-size 64   # one 200-cell sample's report, end to end
    python benchmark.py --suite scale-out --rounds 3   # the tiny protocol: folds one after the other vs --fold-parallel (torchrun)
    python benchmark.py --suite baseline --data HuSHeM/   # an SVM on grey pixels, the same folds as the networks
    python benchmark.py --suite duplicates --data SMIDS/ --epoch-from runs/smids/efficientnet_tiny/fold1   # the duplicate check vs an epoch
    python benchmark.py --suite cpu --models efficientnet_tiny resnetv2_tiny --img-size 64 --batch-size 32   # CPU speed-ups

Latency: median (p10/p90, mean) over --iters timed runs after --warmup untimed ones,
CUDA-synchronised on a GPU; FPS = 1000 / median ms. FLOPs: fvcore's convention, own counter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from spermfuse import cli, flags
from spermfuse.benchmarks import SUITES, Benchmark, run_suite
from spermfuse.benchmarks.speed import settings_for
from spermfuse.core.files import atomic_write_json, atomic_write_text
from spermfuse.runtime import DEVICE_HELP, device_description, resolve_device
from spermfuse.training.progress_line import round_counter


def parse_args(argv=None) -> argparse.Namespace:
    """The suites' settings come from Benchmark's fields (flags.setting); --suite, --device and the outputs are the program's."""
    p = cli.argument_parser(__doc__)
    p.add_argument(
        "--suite",
        choices=list(SUITES),
        default="models",
        help="what to measure (default models: parameters, FLOPs, latency; see the examples above)",
    )
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
    sections = {"timing": p.add_argument_group("timing"), "suites": p.add_argument_group("the other suites")}
    flags.add_setting_flags(p, Benchmark, sections)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--markdown",
        type=Path,
        help="--suite export/padding/explain/cpu/guarantees: also write its table here (for the README)",
    )
    return p.parse_args(argv)


def run(args) -> None:
    device = resolve_device(args.device)
    bench = Benchmark(
        args.suite,
        **flags.given_settings(args, Benchmark),
        device=device,
        scripts=Path(__file__).parent,
        write=print,
        progress=round_counter,
    )
    settings_for(bench, bench.batch_size).check(device)
    dtype = (
        "fp16 weights"
        if bench.half
        else {"on": "fp16 autocast" if device.type == "cuda" else "bf16 autocast", "off": "fp32"}[bench.amp]
    )
    print(
        f"machine: {device_description(device)} | torch {torch.__version__} | {dtype}"
        f"{' | channels_last' if bench.channels_last else ''}{' | CUDA graph' if bench.cuda_graph else ''} | batch {bench.batch_size} | {bench.img_size} px"
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
                "command": "python benchmark.py " + " ".join(sys.argv[1:]),
                "settings": {k: str(v) for k, v in vars(bench).items() if not callable(v) and k != "markdown"},
                "results": results,
            },
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
