"""`launch` with plugins: a broken plugin is refused before the store is touched; on a
cluster, every node must import each plugin the spec names at the driver's version.

The cluster is `ray.cluster_utils.Cluster`: each node's raylet gets its own PYTHONPATH, so one
node can hold another version of the plugin, or none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from bnsweep import cli
from bnsweep.preflight import check_plugins_on_nodes
from bnsweep.sweep import expand, parse_sweep_spec
from bnsweep.workers.errors import BnsweepError
from tests.service.test_reliability import ray_env  # noqa: F401 (fixture)
from tests.workers import test_plugins
from tests.workers.test_plugins import GOOD_ENTRIES, GOOD_MODULE, MakePlugin, write_distribution

pytestmark = pytest.mark.timeout(600)
make_plugin = test_plugins.make_plugin

SPEC = """\
name: plugged
defaults: {dataset: blobs, arch: tinynet, epochs: 1, batch_size: 8, device: cpu}
grids:
  - {formulation: [offset_bn]}
seeds: 2
"""


def _launch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC + f"storage: {tmp_path / 'runs'}\n")
    db = tmp_path / "results.db"
    code = cli.main(["launch", str(spec), "--db", f"sqlite:///{db}", "--no-tables"])
    assert not db.exists()  # refused before the store was opened
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("\ntinynet = lambda *args: None\n", "returned a NoneType, not a torch.nn.Module"),
        ("\ndef tinynet(*args):\n    raise ValueError('bad width')\n", "ValueError: bad width"),
        ("\nblobs.__bnsweep_plugin__ = None\n", "not decorated with bnsweep.register_dataset"),
    ],
)
def test_launch_refuses_a_broken_plugin_before_writing(
    make_plugin: MakePlugin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    needle: str,
) -> None:
    make_plugin("broken-plugin", GOOD_MODULE + extra)
    code, err = _launch(tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "(broken-plugin 0.1.0)" in err and needle in err


def test_train_names_a_broken_plugin_in_one_line(
    make_plugin: MakePlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    make_plugin("broken-plugin", GOOD_MODULE + "\ndef tinynet(*args):\n    raise KeyError(3)\n")
    code = cli.main(["train", "--arch", "tinynet", "--dataset", "blobs", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "(broken-plugin 0.1.0): building the network raised KeyError: 3" in err


def test_train_runs_a_plugin(make_plugin: MakePlugin, capsys: pytest.CaptureFixture[str]) -> None:
    make_plugin("train-plugin")
    argv = ["train", "--arch", "tinynet", "--dataset", "blobs", "--formulation", "offset_bn"]
    code = cli.main([*argv, "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and '"status": "completed"' in out


def _site(tmp_path: Path, version: str) -> str:
    site = tmp_path / f"node-site-{version}"
    text = GOOD_MODULE.replace("RECIPE", "1")
    write_distribution(site, "node-plugin", version, "node_plugin", text, GOOD_ENTRIES)
    return str(site)


@pytest.fixture
def cluster(ray_env: dict[str, str], tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    """A head with no CPUs and one worker node, both with the plugin at 0.1.0."""
    same = {"PYTHONPATH": _site(tmp_path, "0.1.0")}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "env_vars": same},
    )
    cluster.add_node(num_cpus=1, env_vars=same)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_every_node_must_hold_the_drivers_plugin_version(
    cluster: Cluster, make_plugin: MakePlugin, tmp_path: Path
) -> None:
    make_plugin("node-plugin")  # the driver's: 0.1.0
    cells = expand(parse_sweep_spec(SPEC))
    check_plugins_on_nodes(cells, ray.nodes())  # every node agrees: nothing to say

    other = cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": _site(tmp_path, "0.2.0")})
    cluster.wait_for_nodes()
    with pytest.raises(BnsweepError) as err:
        check_plugins_on_nodes(cells, ray.nodes())
    text = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in text
    assert "has node-plugin 0.2.0, the driver 0.1.0" in text
    assert f"id {other.node_id[:12]}" in text and "install node-plugin==0.1.0" in text
    cluster.remove_node(other)

    bare = cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": ""})
    cluster.wait_for_nodes()
    with pytest.raises(BnsweepError) as err:
        check_plugins_on_nodes(cells, ray.nodes())
    text = str(err.value)
    assert f"id {bare.node_id[:12]}" in text and "unknown value" in text
    assert "install node-plugin==0.1.0 there" in text
