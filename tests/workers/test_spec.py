"""`TrialSpec`'s key: pinned hashes, the training recipe in it, and the γ rule."""

from __future__ import annotations

import hashlib
import json

import pytest

import bnsweep.workers.spec
from bnsweep.workers.errors import SpecError
from bnsweep.workers.spec import NON_RESULT_FIELDS, RECIPE, TrialSpec

#: The key of a few specs under recipe 3. Any change here changes which stored cells a launch
#: reuses: it must come with a RECIPE bump and a line in workers/spec.py saying why.
PINNED = {
    "defaults": ({}, "a403de1d16011404"),
    "digits BASE": (
        {
            "dataset": "digits",
            "arch": "resnet8",
            "bn_scale_init": 1.0,
            "bn_lr_divisor": 1.0,
            "lr": 0.01,
            "epochs": 30,
        },
        "7ed8d255e73b0f3c",
    ),
    "cifar100 rbn fixed bf16": (
        {
            "dataset": "cifar100",
            "arch": "resnet34",
            "formulation": "rbn",
            "bn_scale_init": 1.0,
            "input_norm": "fixed",
            "precision": "bf16",
            "memory_format": "channels_last",
        },
        "e4e8c1e7be98402a",
    ),
}


@pytest.mark.parametrize("name", PINNED)
def test_pinned_spec_hashes(name: str) -> None:
    values, expected = PINNED[name]
    assert RECIPE == 3, "a new recipe: update PINNED with the new hashes"
    assert TrialSpec(**values).spec_hash == expected


def test_the_hash_is_the_documented_payload() -> None:
    spec = TrialSpec(dataset="digits", arch="resnet8", seed=7, device="cpu", compile=True)
    payload = {
        name: repr(value) if isinstance(value, float) else value
        for name, value in spec.to_dict().items()
        if name not in NON_RESULT_FIELDS
    }
    payload["recipe"] = RECIPE
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert spec.spec_hash == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_a_new_recipe_changes_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [TrialSpec(**values) for values, _ in PINNED.values()]
    before = [spec.spec_hash for spec in specs]
    monkeypatch.setattr(bnsweep.workers.spec, "RECIPE", RECIPE + 1)
    after = [spec.spec_hash for spec in specs]
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_seed_device_and_compile_leave_the_key_alone() -> None:
    spec = TrialSpec()
    assert spec.replace(seed=9, device="cpu", compile=True).spec_hash == spec.spec_hash


@pytest.mark.parametrize("gamma", [1.5, 10])
def test_gamma_above_one_is_a_valid_spec(gamma: float) -> None:
    # Sect. 4.4: "We also experimented with initially setting the BN scale parameter to γ > 1".
    assert TrialSpec(bn_scale_init=gamma).bn_scale_init == float(gamma)


@pytest.mark.parametrize("gamma", [0, -0.25])
def test_gamma_not_above_zero_is_one_clear_error(gamma: float) -> None:
    with pytest.raises(SpecError, match=r"^bn_scale_init \(γ\): must be a finite number > 0"):
        TrialSpec(bn_scale_init=gamma)


def test_the_light_registry_names_are_the_registries() -> None:
    """A spec validates against name lists that need no torch (`launch --dry-run`); each must
    be its registry's keys, in order, so registering a model or dataset means naming it there."""
    from bnsweep.workers.data import DATASETS
    from bnsweep.workers.models import MODELS
    from bnsweep.workers.norm import FORMULATIONS, INPUT_NORMS

    assert tuple(DATASETS) == bnsweep.workers.spec.DATASET_NAMES
    assert tuple(MODELS) == bnsweep.workers.spec.ARCH_NAMES
    assert tuple(FORMULATIONS) == bnsweep.workers.spec.FORMULATION_NAMES
    assert tuple(INPUT_NORMS) == bnsweep.workers.spec.INPUT_NORM_NAMES
