"""The moving average of the weights (ema.py)."""

import torch

from spermfuse.core.ema import WeightEMA


def test_weight_ema_moves_the_average_by_one_minus_decay_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.75)
    ema.updates = 1000  # past the warm-up: the decay itself applies
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].num_batches_tracked.add_(3)
    ema.update(model)
    assert torch.allclose(ema.shadow["0.weight"], before["0.weight"] + 0.25 * 4.0)
    assert ema.shadow["1.num_batches_tracked"].item() == 3


def test_weight_ema_warms_up_from_a_short_memory():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = WeightEMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.shadow["weight"].fill_(1.0)
    ema.update(model)  # first update: d = min(0.999, 1/10), so the average moves 90 % of the way
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.1))
