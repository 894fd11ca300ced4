"""Every W&B sweep file's agent command line is accepted by the real CLI with sampled values."""

import random
from pathlib import Path

import pytest
import yaml

from repsuite.cli import run_cli
from tests.conftest import ROOT

SWEEPS = sorted((ROOT / "configs/sweeps").glob("*.yaml"))


def _sample(spec: dict, rng: random.Random):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    if spec.get("distribution") in ("log_uniform_values", "uniform", "q_uniform", None):
        return rng.uniform(spec["min"], spec["max"])
    raise AssertionError(f"unhandled sweep parameter spec {spec}")


def test_there_are_sweeps():
    assert SWEEPS


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_agent_command_parses(path: Path, seed, monkeypatch, capsys):
    sweep = yaml.safe_load(path.read_text())
    command = sweep["command"]
    assert command[-1] == "${args}", "${args} must come last so sampled values override the configs"
    assert command[:4] == ["${env}", "${interpreter}", "-m", "repsuite"]
    rng = random.Random(seed)
    values = {name: _sample(spec, rng) for name, spec in sweep["parameters"].items()}
    # the agent renders each parameter as --name=value with Python's str()
    args = [f"--{name}={value}" for name, value in values.items()]
    monkeypatch.chdir(ROOT)  # config paths in sweep commands are relative to the repository
    with pytest.raises(SystemExit) as exc:
        run_cli([*command[4:-1], *args, "--print_config"])
    assert exc.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    for name, value in values.items():
        node = printed
        section, _, key = name.partition(".")
        node = printed[section] if key else printed
        if key:
            node = node.get("init_args", node)
            got = node[key]
        else:
            got = node[section]
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, name
