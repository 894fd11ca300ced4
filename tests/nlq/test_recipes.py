"""The thesis recipe configs really build and train at their real feature widths (2304/1536 + 512 + 2)."""

import json

import pytest
import torch

from repsuite.cli import run_cli
from repsuite.nlq.synthetic import SyntheticSpec, write_synthetic_ego4d
from tests.conftest import ROOT
from tests.nlq.test_clip_text import _checkpoint, _config

RECIPES = ROOT / "configs/nlq"


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    root = tmp_path_factory.mktemp("ego4d")
    spec = SyntheticSpec(
        num_videos={"train": 2, "val": 1, "test": 1},
        clips_per_video=1,
        clip_seconds=(30.0, 40.0),
        sources={"slowfast8x8_r101_k400": 2304, "omnivore_video_swinl": 1536, "clip_vitb16": 512},
        text_source=None,
    )
    write_synthetic_ego4d(root, spec, version="v1")
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "configs, video_dim, attention, contrastive",
    [
        (["slowfast_clip.yaml"], 2304 + 512 + 2, "cross", 1.0),
        (["omnivore_clip.yaml"], 1536 + 512 + 2, "cross", 1.0),
        (["slowfast_clip.yaml", "table2_1/self_attention.yaml"], 2304 + 512 + 2, "self", 0.0),
    ],
)
def test_recipe_trains_one_batch(download, tmp_path, in_tmp, configs, video_dim, attention, contrastive):
    config = _config(tmp_path)
    ckpt, _ = _checkpoint(tmp_path, config)
    args = ["fit"]
    for name in configs:
        args += ["--config", str(RECIPES / name)]
    cli = run_cli(
        [
            *args,
            f"--data.root={download}",
            f"--data.clip_model={config}",
            f"--data.clip_checkpoint={ckpt}",
            "--data.num_workers=0",
            "--data.batch_size=4",
            "--trainer.fast_dev_run=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ]
    )
    h = cli.model.hparams
    assert (h.video_dim, h.text_dim, h.hidden, h.num_layers, h.attention) == (
        video_dim,
        24,
        256,
        3,
        attention,
    )
    assert h.contrastive_weight == contrastive and cli.datamodule.hparams.version == "v1"
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert json.loads((download / "v1/clip_text_tiny_clip/manifest.json").read_text())["dim"] == 24
