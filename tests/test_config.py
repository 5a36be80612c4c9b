"""The settings of a training run (config.py): presets under the flags given."""

from spermfuse.training.config import TrainConfig, preset_config


def test_a_preset_value_survives_when_its_flag_is_absent():
    import train
    from spermfuse.training.config import PRESETS

    config = train.build_config(train.parse_args(["--preset", "demo"]), fold=1)
    assert (config.batch_size, config.img_size, config.lr) == tuple(
        PRESETS["demo"][k] for k in ("batch_size", "img_size", "lr")
    )
    assert config.plateau_patience == TrainConfig().plateau_patience  # not in the preset: the default
    assert train.build_config(train.parse_args(["--preset", "demo", "--batch-size", "4"]), fold=1).batch_size == 4


def test_method_b_stops_on_the_unweighted_validation_loss_as_keras_does():
    config = preset_config("paper_b")
    assert (config.monitor, config.val_loss) == ("val_loss", "unweighted")
    assert TrainConfig().val_loss == "weighted"
