"""The benchmark suites in process, at sizes that take seconds: each returns its figures and
reports its table. Through benchmark.py (tests/test_benchmark.py): models, padding, explain,
samples, sample-report. Not in the suite (a minute or more each here; run by hand):
fusion (paper-size commands), cpu (the default data set), scale-out (torchrun)."""

from pathlib import Path

import pytest
import torch

from spermfuse.benchmarks import Benchmark, run_suite
from spermfuse.core.errors import ConfigError
from spermfuse.deploy.export import onnx_available

ROOT = Path(__file__).resolve().parents[1]
TINY_PAIR = ["efficientnet_tiny", "resnetv2_tiny"]


def tiny(suite: str, **settings) -> tuple[dict, list[str], Benchmark]:
    """Run ``suite`` with the tiny pair at 32 px and few rounds; its figures, what it reported, and the settings."""
    reported: list[str] = []
    bench = Benchmark(
        suite=suite,
        models=TINY_PAIR,
        img_size=32,
        iters=3,
        warmup=1,
        rounds=1,
        train_steps=2,
        scripts=ROOT,
        write=reported.append,
        **settings,
    )
    return run_suite(bench), reported, bench


def test_the_rounds_default_to_the_papers_on_a_gpu_and_to_fewer_on_the_cpu():
    assert (Benchmark().iters, Benchmark().warmup) == (20, 5)
    on_gpu = Benchmark(device=torch.device("cuda"))  # a device name: no GPU needed to build the settings
    assert (on_gpu.iters, on_gpu.warmup) == (200, 100)
    assert Benchmark(iters=7, device=torch.device("cuda")).iters == 7  # given rounds stay


def test_an_unknown_model_is_refused_naming_the_flag():
    with pytest.raises(ConfigError, match="--models resnet99: unknown; see train.py --list-models"):
        Benchmark(models=["efficientnet_tiny", "resnet99"])


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"img_size": 0}, "--img-size 0: give 16 or more"),
        ({"batch_size": -1}, "--batch-size -1: give 1 or more"),
        ({"iters": 0}, "--iters 0: give 1 or more"),
        ({"throughput": (8, 0)}, "--throughput 0: give 1 or more"),
    ],
)
def test_a_count_below_its_least_is_refused_naming_the_flag(setting, message):
    with pytest.raises(ConfigError, match=message):
        Benchmark(**setting)


def test_the_models_suite_counts_and_times_both_members_and_the_pair():
    results, reported, _ = tiny("models")
    assert set(results) == {*TINY_PAIR, "fusion", "fusion_concurrent"}
    assert all(r["median_ms"] > 0 and r["params_m"] > 0 for r in results.values())
    assert results["fusion"]["params_m"] == pytest.approx(sum(results[m]["params_m"] for m in TINY_PAIR))
    assert any("fused pair / slower member latency" in line for line in reported)


def test_the_ema_suite_times_a_step_with_and_without_the_update():
    results, reported, _ = tiny("ema")
    assert set(results) == set(TINY_PAIR) and all(r["plain_ms"] > 0 and r["ema_ms"] > 0 for r in results.values())
    assert "| model | step ms (median) |" in reported[0]


def test_the_export_suite_times_every_runtime_beside_eager_and_keeps_its_table_for_markdown():
    results, _, bench = tiny("export")
    assert {"eager, batch 1", "torch.export (.pt2), batch 1", "eager, batch 32"} <= set(results)
    assert {"eager bf16 (autocast), batch 32", "eager bf16 (autocast), channels-last, batch 32"} <= set(results)
    assert "bf16 program (--precision bf16), batch 32" in results
    if onnx_available():
        assert {"ONNX Runtime, batch 1", "ONNX Runtime int8, batch 32"} <= set(results)
    assert bench.markdown.startswith("<!-- written by benchmark.py --suite export --models efficientnet_tiny")


@pytest.mark.skipif(not onnx_available(runtime=True), reason="needs onnx and onnxruntime")
def test_the_int8_profile_suite_times_each_members_int8_models_beside_fp32_by_kind_of_node():
    results, _, bench = tiny("int8-profile", batch_size=2)
    runtimes = ["ONNX Runtime fp32", "int8 (--precision int8)", "int8, activations too"]
    assert set(results) == {f"{model}, {runtime}" for model in TINY_PAIR for runtime in runtimes}
    assert all(r["ms_per_image"] > 0 and sum(r["op_shares"].values()) == pytest.approx(1) for r in results.values())
    shipped, wider = (results[f"efficientnet_tiny, {runtime}"]["op_shares"] for runtime in runtimes[1:])
    # the shipped model quantizes convolutions only; the wider one its SiLU too
    assert "QLinearConv" in shipped and "QLinearSigmoid" not in shipped and "QLinearSigmoid" in wider
    assert bench.markdown.startswith("<!-- written by benchmark.py --suite int8-profile --models efficientnet_tiny")


def test_the_transforms_suite_compares_the_own_pipeline_with_torchvisions():
    results, reported, _ = tiny("transforms")
    assert set(results["ms_per_image"]) == {"spermfuse", "torchvision_v2"} and len(results["rounds"]["spermfuse"]) == 5
    assert any("time ratio" in line for line in reported)


def test_the_loader_suite_measures_the_loader_and_the_training_step(tmp_path):
    results, _, _ = tiny("loader")
    assert {"loader_workers0", "loader_workers2", "train_step_resnetv2_tiny"} == set(results)
    assert all(value > 0 for value in results.values())


def test_the_splits_suite_times_folds_with_and_without_groups():
    results, _, _ = tiny("splits")
    assert len(results) == 4 and all(seconds > 0 for seconds in results.values())


def test_the_promises_suite_keeps_its_guarantees_at_the_papers_scale():
    results, _, bench = tiny("promises")
    assert results["pooled_accepted_accuracy"] >= 0.9  # the promise (TAU 0.9) on a calibrated simulation
    assert "| pooled |" in bench.markdown and results["seconds"] > 0


def test_the_guarantees_suite_sets_the_guards_against_the_commands_they_guard():
    results, _, bench = tiny("guarantees")
    # The shares themselves are timings (docs/GUARANTEES.md reports them); here, what they are made of.
    assert all(results[step] > 0 for step in ("grid", "manifest", "verify", "train", "lock", "aside"))
    assert results["unit_share_of_grid"] == pytest.approx((results["manifest"] + results["verify"]) / results["grid"])
    assert results["run_folder_share_of_tiny_run"] == pytest.approx(
        (results["lock"] + results["aside"]) / results["train"]
    )
    assert "lock + --overwrite's move-aside" in bench.markdown


def test_the_timm_suite_needs_timm():
    pytest.importorskip("timm")
    results, _, _ = tiny("timm", num_classes=4)
    assert results["timm_over_ours_train"] > 0


def test_the_baseline_suite_scores_an_svm_on_every_fold_of_the_data(tmp_path):
    from spermfuse import synthetic

    data = synthetic.generate(tmp_path / "heads", "hushem4", seed=0, per_class=10)
    figures, reported, bench = tiny("baseline", data=data)
    assert len(figures["accuracy_per_fold"]) == 5 and all(0 <= a <= 1 for a in figures["accuracy_per_fold"])
    assert figures["mean"] == pytest.approx(sum(figures["accuracy_per_fold"]) / 5)
    assert "SVM (RBF) on 32 px grey pixels" in bench.markdown and "train.py's 5-fold split" in bench.markdown


def test_the_baseline_suite_refuses_a_missing_folds_csv_naming_the_flag(tmp_path):
    from spermfuse import synthetic

    data = synthetic.generate(tmp_path / "heads", "hushem4", seed=0, per_class=2)
    with pytest.raises(ConfigError, match="--folds-csv .*missing.csv: not found; give the folds.csv train.py wrote"):
        tiny("baseline", data=data, folds_csv=tmp_path / "missing.csv")


def test_the_duplicates_suite_refuses_an_epoch_folder_without_history_naming_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--epoch-from .*: no history.csv there; give a fold folder train.py wrote"):
        tiny("duplicates", data=tmp_path, epoch_from=tmp_path)


def test_the_duplicates_suite_sets_the_check_beside_an_epoch_and_says_what_it_found(tmp_path, monkeypatch):
    from spermfuse import synthetic
    from spermfuse.benchmarks import real_data
    from spermfuse.core.files import atomic_write_csv

    data = synthetic.generate(tmp_path / "heads", "hushem4", seed=0, per_class=6)
    (data / "Normal" / "again.png").write_bytes(next((data / "Normal").glob("*.png")).read_bytes())
    atomic_write_csv(tmp_path / "run" / "history.csv", ["epoch", "seconds"], [[1, 10.0], [2, 12.0]])
    monkeypatch.setattr(real_data, "reading_processes", lambda count: 2)  # as on a large set
    figures, reported, bench = tiny("duplicates", data=data, epoch_from=tmp_path / "run")
    assert figures["epoch"] == 11.0 and figures["images"] == 25 and figures["processes"] == 2
    assert 0 < figures["thumbnails"] <= figures["detection"] * 2 and figures["pair_search"] > 0  # parts, timed apart
    assert "1 groups of duplicate images (2 files; 1 pixel-identical" in bench.markdown
    for count in (1, 2):
        cost = figures[f"reading_{count}"] - figures[f"decoding_{count}"]
        assert f"the check: {cost:.2f} s, {100 * cost / 11.0:.1f} % of an epoch" in bench.markdown
