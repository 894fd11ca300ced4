"""NLQModule through the real CLI on the committed tiny download (tests/data/ego4d_nlq)."""

from pathlib import Path

import pytest
import torch

from repsuite.cli import run_cli
from repsuite.nlq import NLQModule, validate_submission
from repsuite.nlq.evaluation import evaluate_nlq, load_json
from tests.conftest import ROOT

DEMO = str(ROOT / "configs/nlq/demo.yaml")
DATA = str(ROOT / "tests/data/ego4d_nlq")
FAST = [
    f"--data.root={DATA}",
    "--trainer.max_epochs=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.batch_size=4",
    "--trainer.log_every_n_steps=1",
]


@pytest.mark.parametrize("attention", ["cross", "self"])
def test_demo_config_fits_and_logs_official_metrics(in_tmp, attention):
    cli = run_cli(["fit", "--config", DEMO, *FAST, f"--model.attention={attention}"])
    metrics = cli.trainer.callback_metrics
    for key in (
        "train/loss",
        "train/span",
        "train/highlight",
        "train/saliency",
        "train/npm",
        "train/contrastive",
        "val/R@1_IoU0.3",
        "val/R@1_IoU0.5",
        "val/R@5_IoU0.3",
        "val/R@5_IoU0.5",
        "val/mean_R@1",
        "val/mIoU",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["val/evaluated"] == 4
    # feature widths came from the files and are saved for reloading
    assert cli.model.hparams.video_dim == 24 and cli.model.hparams.text_dim == 0
    ckpt = in_tmp / "outputs/nlq_demo/checkpoints/last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["hyper_parameters"]["video_dim"] == 24
    reloaded = NLQModule.load_from_checkpoint(ckpt, weights_only=True)
    assert reloaded.model is not None and reloaded.hparams.attention == attention


def test_predictions_form_a_valid_submission_scored_like_validation(in_tmp):
    cli = run_cli(["fit", "--config", DEMO, *FAST])
    preds = cli.trainer.predict(cli.model, dataloaders=cli.datamodule.val_dataloader())
    entries = [e for batch in preds for e in batch]
    sub = {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": entries}
    gt = load_json(Path(DATA) / "v2/annotations/nlq_val.json")
    validate_submission(sub, gt, max_windows=5, require_ordered=True)
    assert all(len(e["scores"]) == len(e["predicted_times"]) for e in entries)
    official = evaluate_nlq(sub, gt)
    logged = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert logged["val/R@1_IoU0.3"] == pytest.approx(100 * official.recall[(0.3, 1)], abs=1e-4)
    assert logged["val/mIoU"] == pytest.approx(100 * official.mean_iou, abs=1e-4)


def test_resume_matches_an_uninterrupted_run(in_tmp):
    """Stop after epoch 2, resume to 4 with --ckpt_path: same weights and metrics as one 4-epoch run.

    Augmentations, dropout, shuffling and the per-batch K all draw random numbers, so this only holds when
    the checkpoint carries the RNG states (repsuite.resume).
    """
    common = [
        "fit", "--config", DEMO, *FAST, "--data.sliding_window=true", "--data.video_splicing=true",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true",
    ]  # fmt: skip
    full = run_cli([*common, "--trainer.max_epochs=4", "--trainer.callbacks.dirpath=full"])
    run_cli([*common, "--trainer.max_epochs=2", "--trainer.callbacks.dirpath=part"])
    ckpt = in_tmp / "part/last.ckpt"
    assert torch.load(ckpt, weights_only=True)["repsuite_rng_states"]["cpu"].shape[0] == 1
    resumed = run_cli(
        [*common, "--trainer.max_epochs=4", "--trainer.callbacks.dirpath=res", f"--ckpt_path={ckpt}"]
    )
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    for key in ("val/R@1_IoU0.3", "val/mIoU", "val/loss"):
        assert full.trainer.callback_metrics[key] == resumed.trainer.callback_metrics[key], key


def test_widths_read_at_setup_travel_in_the_checkpoint_not_the_hyperparameters(in_tmp):
    """Python use without the CLI: the DataModule gives the widths at setup; reloading needs no DataModule."""
    from lightning.pytorch import Trainer

    from repsuite.nlq import Ego4DNLQDataModule

    dm = Ego4DNLQDataModule(DATA, features=["slowfast8x8_r101_k400", "clip_vitb16"], batch_size=4)
    sizes = dict(hidden=32, num_heads=4, ffn=64, num_layers=1, span_layers=1, text_encoder_layers=1)
    module = NLQModule(**sizes, max_video_len=dm.max_video_len)
    trainer = Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert module.hparams.video_dim is None and module.model.cfg.video_dim == 24
    trainer.save_checkpoint(in_tmp / "m.ckpt")
    reloaded = NLQModule.load_from_checkpoint(in_tmp / "m.ckpt", weights_only=True)
    assert reloaded.model.cfg == module.model.cfg
    for k, v in module.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.slow  # TorchInductor compiles each graph on first use: minutes on a 2-core CPU
def test_compile_switch_trains_the_compiled_network_with_plain_checkpoint_keys(in_tmp):
    """``--model.compile=true``: the forward runs through TorchInductor, equal to the eager forward.

    One training batch: a second one of another length would recompile with dynamic shapes (minutes).
    """
    cli = run_cli(
        ["fit", "--config", DEMO, *FAST, "--model.compile=true", "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--model.scales=[3]"]
    )  # fmt: skip
    net = cli.model.model
    assert net._compiled_call_impl is not None  # nn.Module.compile() in place
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    state = torch.load(in_tmp / "outputs/nlq_demo/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)
    batch = next(iter(cli.datamodule.val_dataloader()))
    net.eval()
    with torch.no_grad():
        args = (batch["video"], batch["video_padding_mask"], batch["text"], batch["text_padding_mask"], 3)
        compiled, eager = net(*args), net.forward(*args)  # __call__ is compiled, .forward is not
    torch.testing.assert_close(compiled.start_logits, eager.start_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.npm_scores, eager.npm_scores, atol=1e-5, rtol=1e-5)


def test_inference_over_several_scales_projects_the_inputs_once():
    """``predict_windows`` shares the scale-independent input projections; windows are unchanged."""
    from repsuite.nlq.data import NLQSample, collate_nlq

    torch.manual_seed(0)
    module = NLQModule(video_dim=24, text_dim=12, hidden=32, num_heads=4, ffn=64, num_layers=2,
                       span_layers=1, max_video_len=64, contrast_dim=8).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    samples = [
        NLQSample(torch.randn(n, 24, generator=g), torch.randn(7, 12, generator=g), 3, 8, (1.6, 4.8),
                  n / 1.875, i, (f"clip{i}", "ann", 0))
        for i, n in enumerate((50, 37))
    ]  # fmt: skip
    batch = collate_nlq(samples)
    calls = []
    module.model.video_proj.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        shared = module.predict_windows(batch)
        assert len(calls) == 1  # five scales, one projection
        each = {k: module._forward(batch, k) for k in module.hparams.scales}  # a full pass per scale
        separate = module.predict_windows(batch, each)
    assert torch.equal(shared[0], separate[0]) and torch.equal(shared[1], separate[1])
