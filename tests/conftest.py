import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL = "tests.helpers.toy.ToyModule"
TOY_DATA = "tests.helpers.toy.ToyDataModule"

# Session fixtures that tests in several folders use (one trained NLQ checkpoint, one tiny face-swap run).
pytest_plugins = ["tests.nlq.fixtures", "tests.faceswap.fixtures"]


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """No test may reach W&B servers or need a key; runs land under the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty working directory (loggers write relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


PYTHON = sys.executable
