"""The demo's cached pretraining: made once, reused, rebuilt when the cache does not check out."""

import json

import pytest
import torch

from spermfuse.core.checkpoints import safe_torch_load
from spermfuse.synthetic import SPERM18_CLASSES
from spermfuse.training import pretrain

TINY = pretrain.PretrainRecipe(per_class=3, img_size=32, epochs=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPERMFUSE_CACHE", str(tmp_path))
    return tmp_path


def test_a_checkpoint_is_made_once_recorded_and_then_reused(cache):
    best = pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0)
    checkpoint = safe_torch_load(best)
    assert checkpoint["arch"] == "resnetv2_tiny" and checkpoint["classes"] == SPERM18_CLASSES
    record = json.loads((best.parents[1] / "pretrain.json").read_text())
    assert record["arch"] == "resnetv2_tiny" and record["recipe"]["per_class"] == 3
    made = best.stat().st_mtime_ns
    assert pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0) == best
    assert best.stat().st_mtime_ns == made  # reused, not trained again


def test_the_pretraining_set_holds_none_of_the_evaluated_images(cache):
    from spermfuse.synthetic import render

    data = pretrain.pretraining_data(TINY)
    pretrained = (data / "Normal" / "Normal_00000.png").read_bytes()
    import io

    buffer = io.BytesIO()
    render("sperm18", "Normal", 42, 0)[0].save(buffer, format="PNG", optimize=False)
    assert pretrained != buffer.getvalue()  # seed 1042, not the folds' seed 42
    assert TINY.seed != 42


def test_a_corrupt_cached_checkpoint_is_detected_and_pretrained_again(cache, caplog):
    best = pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0)
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0)
    assert "SHA-256 differs" in caplog.text and "pretraining again" in caplog.text
    safe_torch_load(again)  # a whole checkpoint again


def test_a_record_of_another_architecture_is_not_trusted(cache, caplog):
    best = pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0)
    record_path = best.parents[1] / "pretrain.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "arch": "efficientnet_tiny"}))
    with caplog.at_level("WARNING"):
        pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0)
    assert "another architecture" in caplog.text


def test_an_interrupted_pretraining_resumes_from_its_last_checkpoint(cache, monkeypatch):
    from spermfuse.training import trainer

    recipe = pretrain.PretrainRecipe(per_class=3, img_size=32, epochs=2)
    calls = []
    original = trainer.FoldTrainer._run_epoch

    def killed_after_one_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer.FoldTrainer, "_run_epoch", killed_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrained_checkpoint("resnetv2_tiny", recipe, workers=0)
    monkeypatch.setattr(trainer.FoldTrainer, "_run_epoch", original)
    best = pretrain.pretrained_checkpoint("resnetv2_tiny", recipe, workers=0)
    history = safe_torch_load(best.parent / "last.pt")["history"]
    assert [row["epoch"] for row in history] == [1, 2]  # epoch 1 kept, epoch 2 trained after the restart


def test_fine_tuning_starts_from_the_pretrained_weights(cache, tiny_sperm, tmp_path):
    from conftest import fold_trainer_for, tiny_config

    best = pretrain.pretrained_checkpoint("resnetv2_tiny", TINY, workers=0)
    fine_tune = fold_trainer_for(tiny_config(tiny_sperm, tmp_path / "runs", weights=str(best)))
    assert torch.equal(fine_tune.model.stem.conv.weight, safe_torch_load(best)["model"]["stem.conv.weight"])
