"""Sweep specs: validation names the field; expand() lists every cell once, BASE included."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnsweep.sweep import expand, load_sweep_spec, parse_sweep_spec
from bnsweep.workers.errors import SpecError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MINIMAL = """
name: t
defaults: {dataset: synthetic, arch: resnet8, epochs: 2}
grids:
  - {bn_scale_init: [0.5, 0.1], bn_lr_divisor: [100], lr: [0.1, 0.01]}
seeds: 3
"""


def test_expand_counts_cells_with_base_per_experiment() -> None:
    cells = expand(parse_sweep_spec(MINIMAL))
    # (2 γ + BASE) × 2 α × 3 seeds
    assert len(cells) == 3 * 2 * 3
    assert len({(c.spec_hash, c.seed) for c in cells}) == len(cells)
    base = [c for c in cells if c.is_base]
    assert {c.lr for c in base} == {0.1, 0.01}
    assert {c.seed for c in base} == {1, 2, 3}
    assert all(c.input_norm == "bn" for c in base)  # BASE keeps the input BN (Sect. 4.2)


def test_expand_is_stable_and_deduplicates_overlapping_grids() -> None:
    text = MINIMAL.replace(
        "grids:", "grids:\n  - {bn_scale_init: [0.5], bn_lr_divisor: [100], lr: [0.1]}"
    )
    a, b = expand(parse_sweep_spec(text)), expand(parse_sweep_spec(text))
    assert [(c.spec_hash, c.seed) for c in a] == [(c.spec_hash, c.seed) for c in b]
    assert len(a) == 3 * 2 * 3


def test_explicit_seed_list() -> None:
    cells = expand(parse_sweep_spec(MINIMAL.replace("seeds: 3", "seeds: [4, 9]")))
    assert {c.seed for c in cells} == {4, 9}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds: 3", "seeds: 0"), "seeds"),
        (("seeds: 3", "seeds: [1, 1]"), "seeds"),
        (("name: t", "name: 'bad name!'"), "name"),
        (("epochs: 2", "epochs: 0"), "epochs"),
        (("epochs: 2", "epoch: 2"), "unknown trial field(s) epoch"),
        (("lr: [0.1, 0.01]", "lr: []"), "empty list"),
        (("[0.5, 0.1]", "[0.5, 0.0]"), "bn_scale_init"),
        (("[0.5, 0.1]", "[-1.5]"), "bn_scale_init"),
        (("bn_lr_divisor: [100]", "bn_lr_divisor: [0.5]"), "bn_lr_divisor"),
        (("arch: resnet8", "arch: resnet9"), "arch"),
        (("dataset: synthetic", "dataset: mnist"), "dataset"),
        (("seeds: 3", "seeds: 3\nresources: {gpus: 1.5}"), "resources.gpus"),
        (("seeds: 3", "seeds: 3\nresources: {tpus: 1}"), "resources.tpus"),
        (("seeds: 3", "seeds: 3\ncolour: blue"), "colour: unknown key"),
        (("seeds: 3", "seeds: 3\nmax_concurrent: 0"), "max_concurrent"),
        (("seeds: 3", "seeds: 3\nretries: -1"), "retries"),
        (("seeds: 3", "seeds: [1, 2"), "not valid YAML"),
        (("seeds: 3", "seeds: 3\nreport: {layout: pie}"), "report"),
    ],
)
def test_bad_specs_give_one_line_naming_the_field(change: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*change)
    assert text != MINIMAL
    with pytest.raises(SpecError) as info:
        parse_sweep_spec(text, source="spec.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("spec.yaml")


def test_a_spec_that_is_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="mapping"):
        parse_sweep_spec("- 1\n- 2\n")


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="not found"):
        load_sweep_spec("/nonexistent/spec.yaml")


def test_demo_config_is_the_issue_grid() -> None:
    spec = load_sweep_spec(CONFIGS / "demo.yaml")
    cells = expand(spec)
    assert {c.dataset for c in cells} == {"digits"} and {c.arch for c in cells} == {"resnet8"}
    assert {c.bn_scale_init for c in cells if not c.is_base} == {1.0, 0.5, 0.1, 0.05}
    assert {c.bn_lr_divisor for c in cells if not c.is_base} == {100.0}
    assert {c.lr for c in cells} == {0.1, 0.01}
    assert len(cells) == (4 + 1) * 2 * 15


# (trial specs without seeds, seeds) per paper table; counts follow Sect. 4.4-4.5.
PAPER = {
    "table1": 7 * 3 + 3,  # γ × α, plus BASE per α
    "table2": 3 * 7 * 3 + 3,  # (ours, A1, A2) × Table 1's γ × α, plus BASE
    "table3": 3 * (3 * 2 + 2),  # per dataset: γ × α + BASE
    "table4": 6 * (3 * 2 + 2),  # per network
    "table5": 3 * (3 * 2 + 2),  # per input normalisation
    "table6": 4 * (4 * 2 + 3 * 2 + 2),  # per dataset: RBN/IEBN variants, proposed γs, BASE
}


@pytest.mark.parametrize("table", sorted(PAPER))
def test_paper_configs_describe_the_tables(table: str) -> None:
    spec = load_sweep_spec(CONFIGS / "paper" / f"{table}.yaml")
    cells = expand(spec)
    assert spec.seed_list == list(range(1, 16))
    assert len(cells) == PAPER[table] * 15
    assert {c.epochs for c in cells} == {180}
    for c in cells:
        assert c.batch_size == (64 if c.dataset in ("cub200", "stanford_cars") else 128)
        assert (
            c.is_base
            or c.formulation in ("rbn", "rbn_minus", "iebn", "iebn_minus")
            or c.bn_lr_divisor == 100
        )


def test_table2_runs_each_formulation_over_table1s_gamma_grid() -> None:
    # "For each formulation, the best performing γ from the previous set was used" (Sect. 4.4):
    # each formulation needs every γ of Table 1 at every α to have a best of its own.
    table1 = expand(load_sweep_spec(CONFIGS / "paper" / "table1.yaml"))
    table2 = expand(load_sweep_spec(CONFIGS / "paper" / "table2.yaml"))
    grid1 = {(c.bn_scale_init, c.lr) for c in table1 if not c.is_base}
    for formulation in ("standard", "a1", "a2"):
        cells = [c for c in table2 if c.formulation == formulation and not c.is_base]
        assert {(c.bn_scale_init, c.lr) for c in cells} == grid1
        assert len(cells) == len(grid1) * 15
    assert {c.bn_lr_divisor for c in table2 if not c.is_base} == {100.0}
    # Ours and BASE are Table 1's own cells: a store holding Table 1 trains only A1 and A2.
    standard = {(c.spec_hash, c.seed) for c in table2 if c.formulation == "standard"}
    assert standard == {(c.spec_hash, c.seed) for c in table1}
