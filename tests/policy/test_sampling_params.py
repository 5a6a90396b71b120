"""SamplingParams: the one set of generation settings the policy, the rollout and the evaluation share."""

from __future__ import annotations

import dataclasses

import pytest

from empg.eval.evaluate import EVAL_SAMPLING
from empg.policy import SamplingParams
from empg.policy.sampling import DEFAULT_SAMPLING
from empg.train.backends import rollout_settings
from empg.train.config import load_config


def test_defaults_and_immutability():
    assert DEFAULT_SAMPLING == SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=64, greedy=False)
    assert EVAL_SAMPLING == SamplingParams(temperature=0.4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SAMPLING.temperature = 0.5  # a shared default must not be changed by one caller


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=0.0), "temperature must be > 0 \\(use greedy=True for argmax\\), got 0.0"),
        (dict(temperature=-1.0, greedy=True), "temperature must be > 0"),  # greedy still records at T
        (dict(temperature=float("nan")), "temperature must be > 0"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\], got 0.0"),
        (dict(top_p=1.5), "top_p must be in \\(0, 1\\], got 1.5"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_the_trainer_builds_its_rollout_sampling_from_the_config():
    cfg = load_config(None, ["rollout.temperature=0.6", "rollout.max_new_tokens=24"])
    settings = rollout_settings(cfg, None)
    assert settings["sampling"] == SamplingParams(temperature=0.6, top_p=1.0, max_new_tokens=24)
    assert not {"temperature", "top_p", "max_new_tokens", "greedy"} & set(settings)
