"""OCC needs a second mini-batch: on the first one of an RL step the weights are the rollout weights,
``d_rl = 0`` and the coefficient is 0, so with one mini-batch the MTP term would never act."""

from __future__ import annotations

import pytest

from occ_fast.config import Config, ConfigError, parse_config


def test_occ_with_one_mini_batch_is_refused_saying_why_and_what_to_set():
    with pytest.raises(ConfigError) as err:
        parse_config(["--mtp.regime", "occ", "--optim.mini-batches", "1"])
    message = str(err.value)
    assert "mtp.regime='occ'" in message and "optim.mini_batches=1" in message
    assert "rollout weights" in message and "optim.mini_batches >= 2" in message


@pytest.mark.parametrize("regime", ["none", "detach", "ce", "policy"])
def test_other_regimes_run_with_one_mini_batch(regime):
    assert parse_config(["--mtp.regime", regime, "--optim.mini-batches", "1"]).optim.mini_batches == 1


def test_defaults_give_occ_a_mini_batch_to_act_on():
    default = Config().validate()  # the dataclass defaults alone
    assert default.mtp.regime == "occ" and default.optim.mini_batches >= 2
    for preset in ("tiny", "mimo-7b-dapo-occ", "qwen2.5-fresh-mtp"):
        cfg = parse_config(["--preset", preset])
        assert cfg.mtp.regime == "occ" and cfg.optim.mini_batches >= 2, preset
    assert parse_config([]).optim.mini_batches >= 2  # python -m occ_fast.train with no arguments
