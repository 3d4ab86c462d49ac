"""The copy of a spec the store keeps (issue 13, item 4): the password of its `database:` URL is
redacted as data, every other character stays as written, and the `report:` layout survives."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

import bnsweep.driver
from bnsweep.callback import LaunchSummary
from bnsweep.commands import launch as launch_command
from bnsweep.store.api import Store
from bnsweep.store.errors import redact_url
from bnsweep.store.results import sweep_report
from bnsweep.sweep import parse_sweep_spec, redacted_spec_text

SPEC = """\
# a password-looking word: a
name: secret-sweep
defaults: {dataset: digits, arch: resnet8, epochs: 1, device: cpu}
grids:
  - {bn_scale_init: [0.5], lr: [0.1]}
seeds: 2
database: {url}   # the store
report:
  layout: gamma
  blocks: [dataset]
"""


def spec(url: str) -> str:
    return SPEC.replace("{url}", url)


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://bnsweep:a@db.example/results", []),  # 'a' is everywhere else too
        ("postgresql://bnsweep:p%40ss%3Aw0rd@db.example/results", ["p@ss:w0rd", "p%40ss%3Aw0rd"]),
        ("'postgresql://bnsweep:s3cr3t@db.example/results'", ["s3cr3t"]),
        ("postgresql://bnsweep@db.example/results?password=hunter2", ["hunter2"]),
    ],
)
def test_the_password_is_redacted_and_nothing_else_changes(url: str, secrets: list[str]) -> None:
    text = spec(url)
    stored = redacted_spec_text(text)
    for secret in secrets:
        assert secret not in stored
    before, after = text.splitlines(), stored.splitlines()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 1 and changed[0][0].startswith("database: ")
    assert after[-3:] == before[-3:] and after[0] == before[0]
    assert changed[0][1] == f'database: "{redact_url(yaml.safe_load(url))}"   # the store'
    original, kept = parse_sweep_spec(text), parse_sweep_spec(stored)
    assert kept.report == original.report and kept.name == original.name
    assert kept.database == redact_url(original.database or "")


def test_a_spec_without_a_password_is_kept_byte_for_byte() -> None:
    for url in ("sqlite:///results.db", "postgresql://bnsweep@db.example/results"):
        assert redacted_spec_text(spec(url)) == spec(url)
    text = spec("sqlite:///r.db").replace("database: sqlite:///r.db   # the store\n", "")
    assert redacted_spec_text(text) == text


def test_launch_stores_the_redacted_spec_with_its_report_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = tmp_path / "s.yaml"
    path.write_text(spec("postgresql://bnsweep:a@db.example/results"), encoding="utf-8")
    from bnsweep.sweep import expand

    def fake_launch(sweep, store, spec_text, **_kwargs):  # what the driver stores of the spec
        store.register_sweep(sweep.name, spec_text, expand(sweep))
        return LaunchSummary()

    monkeypatch.setattr(bnsweep.driver, "launch", fake_launch)
    args = argparse.Namespace(
        spec=str(path), db=url, address=None, dry_run=False, num_cpus=None, no_tables=True
    )
    assert launch_command.run(args) == 0
    with Store.open(url, create=False) as store:
        stored = store.get_sweep("secret-sweep").spec_text
    assert stored == redacted_spec_text(path.read_text(encoding="utf-8"))
    assert "bnsweep:***@db.example" in stored
    assert sweep_report(url, "secret-sweep") == yaml.safe_load(path.read_text())["report"]


def test_launch_prints_its_tables_from_the_spec_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tables at the end of a launch take the layout from the launched spec, not from its
    stored text parsed again."""
    import bnsweep.store.results
    from bnsweep.sweep import expand

    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = tmp_path / "s.yaml"
    path.write_text(spec(url), encoding="utf-8")

    def fake_launch(sweep, store, spec_text, **_kwargs):
        store.register_sweep(sweep.name, spec_text, expand(sweep))
        return LaunchSummary()

    def no_stored_report(*_args, **_kwargs):
        raise AssertionError("the launch read its spec back from the store")

    monkeypatch.setattr(bnsweep.driver, "launch", fake_launch)
    monkeypatch.setattr(bnsweep.store.results, "sweep_report", no_stored_report)
    args = argparse.Namespace(
        spec=str(path), db=url, address=None, dry_run=False, num_cpus=None, no_tables=False
    )
    assert launch_command.run(args) == 0
    assert "sweep secret-sweep: no tables yet (no completed trial" in capsys.readouterr().out
