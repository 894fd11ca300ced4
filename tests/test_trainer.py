"""Trainer plumbing promised by the design card, run for real on CPU: fragments, bf16-mixed, W&B offline,
config saving, checkpoints, and DDP with two processes (ddp_spawn in-process, ddp through the CLI)."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger

from repsuite.cli import run_cli
from tests.conftest import PYTHON, ROOT, TOY_DATA, TOY_MODEL, subprocess_env

CPU_DEBUG = str(ROOT / "configs/trainer/cpu_debug.yaml")
WANDB = str(ROOT / "configs/trainer/wandb.yaml")
TOY = ["--model", TOY_MODEL, "--data", TOY_DATA]
QUIET = ["--trainer.enable_model_summary=false"]


def _markers(path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(path.glob("rank*.json"))]


def test_cpu_debug_fit_trains_and_uses_rich_bar(in_tmp):
    cli = run_cli(
        [
            "fit",
            "--config",
            CPU_DEBUG,
            *TOY,
            *QUIET,
            "--trainer.max_epochs=6",
            "--trainer.detect_anomaly=false",
        ]
    )
    trainer = cli.trainer
    assert trainer.state.finished
    assert any(isinstance(cb, RichProgressBar) for cb in trainer.callbacks)
    assert trainer.current_epoch == 6
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss_epoch"]) and torch.isfinite(logged["val/loss"])
    # the toy target is learnable: six short epochs must beat the untrained model
    x, ctx, y = next(iter(cli.datamodule.val_dataloader()))
    fresh = type(cli.model)()
    with torch.no_grad():
        untrained = torch.nn.functional.mse_loss(fresh(x, ctx), y)
    assert logged["val/loss"] < untrained


def test_progress_bar_choice_is_respected(in_tmp):
    # run=False builds the trainer without a subcommand
    cli = run_cli(["--config", CPU_DEBUG, *TOY, *QUIET, "--trainer.enable_progress_bar=false"], run=False)
    assert not any(isinstance(cb, RichProgressBar) for cb in cli.trainer.callbacks)
    cli = run_cli(["--config", CPU_DEBUG, *TOY], run=False)
    assert any(isinstance(cb, RichProgressBar) for cb in cli.trainer.callbacks)
    cli = run_cli(["--config", CPU_DEBUG, *TOY, "--trainer.callbacks+=TQDMProgressBar"], run=False)
    bars = [cb for cb in cli.trainer.callbacks if isinstance(cb, (RichProgressBar, TQDMProgressBar))]
    assert len(bars) == 1 and isinstance(bars[0], TQDMProgressBar)


def test_bf16_mixed_on_cpu(in_tmp):
    cli = run_cli(
        [
            "fit",
            "--config",
            CPU_DEBUG,
            *TOY,
            *QUIET,
            "--trainer.precision=bf16-mixed",
            "--trainer.detect_anomaly=false",
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    assert "torch.bfloat16" in cli.model.seen_dtypes  # autocast really ran the layers in bf16
    assert next(cli.model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_second_run_in_same_folder_does_not_abort(in_tmp):
    args = [
        "fit",
        "--config",
        CPU_DEBUG,
        *TOY,
        *QUIET,
        "--trainer.max_epochs=1",
        "--trainer.logger=CSVLogger",
        "--trainer.logger.save_dir=logs",
        "--trainer.logger.version=fixed",
    ]
    run_cli(args)
    cli = run_cli([*args, "--model.lr=0.02"])
    assert cli.trainer.state.finished
    saved = yaml.safe_load((in_tmp / "logs/lightning_logs/fixed/config.yaml").read_text())
    assert saved["model"]["init_args"]["lr"] == 0.02  # the second run's config, not the first
    assert saved["seed_everything"] == 0


def test_checkpoint_loads_weights_only_and_resumes(in_tmp):
    cli = run_cli(["fit", "--config", CPU_DEBUG, *TOY, *QUIET, "--trainer.max_epochs=1"])
    ckpts = list(Path(cli.trainer.log_dir).rglob("*.ckpt"))
    assert ckpts, "ModelCheckpoint wrote nothing"
    state = torch.load(ckpts[0], weights_only=True)
    assert "state_dict" in state and state["hyper_parameters"]["lr"] == 0.01
    cli = run_cli(
        ["fit", "--config", CPU_DEBUG, *TOY, *QUIET, "--trainer.max_epochs=2", f"--ckpt_path={ckpts[0]}"]
    )
    assert cli.trainer.current_epoch == 2
    cli = run_cli(["validate", "--config", CPU_DEBUG, *TOY, *QUIET, f"--ckpt_path={ckpts[0]}"])
    assert "val/loss" in cli.trainer.callback_metrics


WANDB_FIT = ["fit", "--config", CPU_DEBUG, "--config", WANDB, *TOY, *QUIET, "--trainer.max_epochs=1"]


@pytest.fixture
def wandb_finish():
    import wandb

    yield
    wandb.finish()


def test_wandb_offline_run_stores_resolved_config(in_tmp, wandb_finish):
    cli = run_cli([*WANDB_FIT, "--model.lr=0.03", "--trainer.logger.init_args.save_dir=wb"])
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger)
    run = logger.experiment
    assert run.settings.mode == "offline"
    stored = run.config["config"]
    assert stored["model"]["class_path"] == TOY_MODEL
    assert stored["model"]["init_args"]["lr"] == 0.03
    assert stored["trainer"]["max_epochs"] == 1
    text = (Path(run.dir) / "repsuite_config.yaml").read_text()
    assert yaml.safe_load(text)["model"]["init_args"]["lr"] == 0.03
    assert any((in_tmp / "wb" / "wandb").glob("offline-run-*"))


def test_wandb_without_key_falls_back_to_offline(in_tmp, monkeypatch, wandb_finish):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(in_tmp))  # no ~/.netrc, no stored key
    monkeypatch.setenv("NETRC", str(in_tmp / "absent-netrc"))
    with pytest.warns(UserWarning, match="no API key found"):
        cli = run_cli([*WANDB_FIT, "--trainer.logger.init_args.save_dir=wb"])
    assert cli.trainer.logger.experiment.settings.mode == "offline"


@pytest.mark.slow
def test_ddp_spawn_two_processes_in_process(in_tmp):
    cli = run_cli(
        [
            "fit",
            "--config",
            CPU_DEBUG,
            *TOY,
            *QUIET,
            "--trainer.devices=2",
            "--trainer.strategy=ddp_spawn",
            "--trainer.detect_anomaly=false",
            "--trainer.limit_train_batches=null",
            f"--model.marker_dir={in_tmp}",
        ]
    )
    assert cli.trainer.world_size == 2
    markers = _markers(in_tmp)
    assert [m["rank"] for m in markers] == [0, 1]
    assert len({m["pid"] for m in markers}) == 2
    # the distributed sampler splits the 64 samples: each rank saw half per epoch (2 epochs)
    assert [m["samples"] for m in markers] == [64, 64]


@pytest.mark.slow
def test_ddp_two_processes_through_cli_subprocess(in_tmp):
    cmd = [
        PYTHON,
        "-m",
        "repsuite",
        "fit",
        "--config",
        CPU_DEBUG,
        *TOY,
        *QUIET,
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.detect_anomaly=false",
        "--trainer.limit_train_batches=null",
        f"--model.marker_dir={in_tmp}",
        "--trainer.precision=bf16-mixed",
    ]
    res = subprocess.run(cmd, cwd=in_tmp, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    markers = _markers(in_tmp)
    assert [m["world_size"] for m in markers] == [2, 2]
    assert len({m["pid"] for m in markers}) == 2
    assert [m["samples"] for m in markers] == [64, 64]
    assert all("torch.bfloat16" in m["dtypes"] for m in markers)
    assert (in_tmp / "lightning_logs/version_0/config.yaml").exists()
