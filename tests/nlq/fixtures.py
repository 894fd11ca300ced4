"""Shared NLQ fixtures: one demo-config model trained on tests/data/ego4d_nlq for the whole session."""

import pytest

from repsuite.cli import run_cli
from tests.conftest import ROOT

DEMO = str(ROOT / "configs/nlq/demo.yaml")
DATA = ROOT / "tests/data/ego4d_nlq"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """last.ckpt of one epoch of configs/nlq/demo.yaml on the test download (tokens, two sources)."""
    import os

    work = tmp_path_factory.mktemp("nlq_fit")
    cwd = os.getcwd()
    os.chdir(work)  # the demo config writes under outputs/
    try:
        run_cli(
            [
                "fit",
                "--config",
                DEMO,
                f"--data.root={DATA}",
                "--trainer.max_epochs=1",
                f"--trainer.default_root_dir={work}",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--data.batch_size=4",
                "--trainer.check_val_every_n_epoch=1",
            ]
        )
    finally:
        os.chdir(cwd)
    return work / "outputs/nlq_demo/checkpoints/last.ckpt"
