"""Property-based fuzz of the sweep spec parser (issue 19): whatever YAML a user writes, parsing
either gives a valid sweep whose every cell is a valid trial, or one `SpecError` line; never
another exception, never a traceback, never a hang.

Derandomized and bounded (a few seconds): CI sees the same examples every run, and a failure
found here shrinks to its smallest document.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnsweep.sweep import SweepSpec, expand, parse_sweep_spec
from bnsweep.workers.errors import SpecError
from bnsweep.workers.spec import FIELD_NAMES, INT_LIMITS

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SPEC_KEYS = tuple(SweepSpec.model_fields)
TRIAL_KEYS = tuple(sorted(FIELD_NAMES))

#: Values a YAML document can hold, hostile ones included: huge and negative integers, NaN and
#: infinities, empty and odd strings, nesting.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["digits", "resnet8", "standard", "cpu", "bn", "0.5", "1e12", "auto"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
trial_fields = st.dictionaries(st.sampled_from(TRIAL_KEYS), values, max_size=5)
grids = st.lists(
    st.dictionaries(st.sampled_from(TRIAL_KEYS), st.lists(values, max_size=3), max_size=3),
    max_size=3,
)
documents = st.fixed_dictionaries(
    {"name": st.one_of(st.just("fuzz"), st.text(max_size=12)), "grids": grids},
    optional={
        "defaults": trial_fields,
        "seeds": st.one_of(
            st.integers(min_value=-3, max_value=2**40), st.lists(st.integers(), max_size=4)
        ),
        **{key: values for key in SPEC_KEYS if key not in ("name", "grids", "defaults", "seeds")},
        "unknown": values,
    },
)


def _parse(text: str) -> SweepSpec | None:
    """The spec, or None after checking the refusal is one line."""
    try:
        return parse_sweep_spec(text, source="fuzz.yaml")
    except SpecError as err:
        line = str(err)
        assert line and "\n" not in line and "Traceback" not in line, line
        return None


def _check_accepted(spec: SweepSpec) -> None:
    for trial in expand(spec):
        assert 1 <= trial.epochs <= INT_LIMITS["epochs"]
        assert 0 <= trial.seed <= INT_LIMITS["seed"]
        assert math.isfinite(trial.lr) and trial.lr > 0
        assert math.isfinite(trial.bn_scale_init) and trial.bn_scale_init > 0


@FUZZ
@given(documents)
def test_any_spec_document_is_a_sweep_or_one_line(document: dict[str, Any]) -> None:
    spec = _parse(yaml.safe_dump(document, allow_unicode=True))
    if spec is not None:
        _check_accepted(spec)


@FUZZ
@given(st.text(max_size=200))
def test_any_text_is_a_sweep_or_one_line(text: str) -> None:
    spec = _parse(text)
    if spec is not None:
        _check_accepted(spec)


@FUZZ
@given(trial_fields, st.integers(min_value=1, max_value=3))
def test_a_valid_sweep_with_fuzzed_defaults_is_a_sweep_or_one_line(
    defaults: dict[str, Any], seeds: int
) -> None:
    document = {
        "name": "fuzz",
        "defaults": {"dataset": "digits", "arch": "resnet8", **defaults},
        "grids": [{"bn_scale_init": [0.5, 0.1]}],
        "seeds": seeds,
    }
    spec = _parse(yaml.safe_dump(document, allow_unicode=True))
    if spec is not None:
        _check_accepted(spec)
