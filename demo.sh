#!/usr/bin/env bash
# Method A end to end on the embedded synthetic sperm18 data: train both backbones on
# every fold, fuse them with the grid search, evaluate, and write the report and figures.
#
#   bash demo.sh                   CPU demo: the small backbones, pretrained once on a separate procedural set
#                                  (spermfuse/training/pretrain.py, cached), fine-tuned on every fold at 64 px
#   bash demo.sh --no-pretrain     the same from scratch (preset demo_scratch)
#   bash demo.sh --preset paper    the paper: efficientnetv2_s + resnet50v2, 240 px, batch 8 (a GPU job)
#   bash demo.sh --preset tiny     a smoke test in seconds (what the test suite runs)
#   bash demo.sh --preset cpu --pretrained
#                                  two ImageNet-initialised torchvision members sized for a CPU (PRESETS['cpu']):
#                                  head first, then every layer; --arch1/--arch2 choose others (train.py --list-models)
#
# Other flags: --data DIR (your own data instead of the synthetic set), --duplicates error|drop-conflicts|keep
# (what to do with an image found under two classes; train.py --help), --out DIR (runs/<preset>),
# --reports DIR (reports), --pretrained (both backbones from their papers' checkpoints, downloaded
# once: python train.py --list-weights), --weights1 PATH / --weights2 PATH (local checkpoints
# for the first and second backbone), --arch1 NAME / --arch2 NAME (the members, any train.py --arch),
# --dry-run (each member's runs and their expected time; nothing trained).
# Every step is a plain command you can run yourself.
set -euo pipefail
PYTHON="${PYTHON:-python}"
absolute() {  # paths given on the command line are relative to where the user stands, not to the repository
  case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac
}
preset=demo data=() out="" reports=reports weights=("" "") pretrained=() pretrain=1 duplicates=() chosen=("" "") dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --data) data=(--data "$(absolute "$2")"); shift 2 ;;
    --duplicates) duplicates=(--duplicates "$2"); shift 2 ;;
    --out) out="$(absolute "$2")"; shift 2 ;;
    --reports) reports="$(absolute "$2")"; shift 2 ;;
    --pretrained) pretrained=(--pretrained); shift ;;
    --no-pretrain) pretrain=0; shift ;;
    --weights1) weights[0]="$(absolute "$2")"; shift 2 ;;
    --weights2) weights[1]="$(absolute "$2")"; shift 2 ;;
    --arch1) chosen[0]="$2"; shift 2 ;;
    --arch2) chosen[1]="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown flag $1 (use --preset demo|paper|tiny|cpu, --data, --duplicates, --out, --reports, --pretrained, --no-pretrain, --weights1, --weights2, --arch1, --arch2, --dry-run)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")"
case "$preset" in
  demo)
    archs=(efficientnet_tiny resnetv2_tiny)
    if [ "$pretrain" = 1 ]; then
      train=(--preset demo)  # its settings: PRESETS in spermfuse/training/config.py
      echo "demo preset: small backbones (${archs[*]}) pretrained once on a separate procedural set (spermfuse/training/pretrain.py),"
      echo "then fine-tuned on every fold at CPU scale, as the paper fine-tunes ImageNet checkpoints (from scratch: --no-pretrain);"
    else
      train=(--preset demo_scratch)
      echo "demo preset: small backbones (${archs[*]}) from scratch at CPU scale (PRESETS['demo_scratch'] in spermfuse/training/config.py);"
    fi
    echo "the paper's settings are: bash demo.sh --preset paper" ;;
  paper)
    archs=(efficientnetv2_s resnet50v2)
    train=(--preset paper_a) ;;
  tiny)
    archs=(efficientnet_tiny resnetv2_tiny)
    train=(--preset tiny) ;;
  cpu)
    archs=(tv:mobilenet_v3_large tv:efficientnet_b0)
    train=(--preset cpu) ;;
  *) echo "demo.sh: --preset must be demo, paper, tiny or cpu" >&2; exit 2 ;;
esac
for i in 0 1; do archs[$i]="${chosen[$i]:-${archs[$i]}}"; done
out="${out:-runs/$preset}"
if [ "$dry_run" = 1 ]; then  # each member's runs and their expected time (train.py --dry-run); nothing is trained or written
  for i in 0 1; do
    "$PYTHON" train.py --fold all --arch "${archs[$i]}" --out "$out" "${data[@]}" "${duplicates[@]}" "${train[@]}" --dry-run
  done
  exit 0
fi
if [ "$preset" = cpu ] && [ ${#pretrained[@]} -eq 0 ]; then
  for i in 0 1; do
    if [ -z "${weights[$i]}" ]; then
      echo "demo.sh: --preset cpu fine-tunes ImageNet weights and none were given for ${archs[$i]}: add --pretrained (torchvision's checkpoints, downloaded once and verified: python train.py --list-weights), or give --weights$((i + 1)) FILE (a state dict of that architecture)" >&2
      exit 2
    fi
  done
fi

# A demo starts clean: its own earlier output (marked) is replaced, anything else is left alone.
if [ -e "$out" ]; then
  if [ -f "$out/.spermfuse-demo" ]; then rm -rf "$out"; else echo "demo.sh: $out exists and is not a demo output; choose another --out" >&2; exit 2; fi
fi
mkdir -p "$out" && touch "$out/.spermfuse-demo"
timed() {  # run a stage and say how long it took
  local name="$1" start=$SECONDS
  shift
  "$@"
  echo "[demo] $name: $((SECONDS - start)) s"
}
for i in 0 1; do
  init=("${pretrained[@]}")
  if [ -n "${weights[$i]}" ]; then
    init=(--weights "${weights[$i]}")
  elif [ "$preset" = demo ] && [ "$pretrain" = 1 ]; then
    start=$SECONDS
    checkpoint=$("$PYTHON" -m spermfuse.training.pretrain --arch "${archs[$i]}")  # cached after the first run
    echo "[demo] pretraining ${archs[$i]} (or finding it cached): $((SECONDS - start)) s"
    init=(--weights "$checkpoint")
  fi
  timed "training ${archs[$i]}, every fold" "$PYTHON" train.py --fold all --arch "${archs[$i]}" --out "$out" "${data[@]}" "${duplicates[@]}" "${train[@]}" "${init[@]}"
done
timed "fusion" "$PYTHON" fuse.py --grid --runs "$out" --models "${archs[@]}" --overwrite
summary=()
if [ "$preset" = demo ] && [ ${#data[@]} -eq 0 ]; then  # the README's figures, with the pointing game against the part masks
  # The promises a lab can act on, beside the paper's fusion (their own folder: the weight is chosen on validation).
  timed "certified referral and prediction sets" "$PYTHON" fuse.py --grid --select val --refer-accuracy 0.7 --sets-alpha 0.1 --sets-by part \
    --runs "$out" --models "${archs[@]}" --out "$reports/$preset-promises" --summary docs/demo_promises.md --overwrite
  masks=data/sperm18-masks  # the default set again (same seed and scale, the same images), with its part masks
  [ -f "$masks/metadata.csv" ] || "$PYTHON" -m spermfuse.synthetic --out "$masks" --masks
  summary=(--summary docs/demo_results.md --explain --masks "$masks")
fi
timed "evaluation" "$PYTHON" evaluate.py --runs "$out" --reports "$reports" --name "$preset" --overwrite "${summary[@]}"
if [ ${#summary[@]} -gt 0 ]; then  # the README's two gallery figures, from this same evaluation
  cp "$reports/$preset/gallery/DoubleHead_correct.png" docs/explanation_doublehead.png
  cp "$reports/$preset/gallery/TaperedHead_correct.png" docs/explanation_taperedhead.png
fi
echo "report: $reports/$preset/report.md"
