"""Shape-aware identity: the face-reconstruction network, its training run, the shape loss in the swapper."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from repsuite.checkpoints import CheckpointError
from repsuite.cli import run_cli
from repsuite.faceswap import FaceRecon, FaceReconConfig, load_face_recon
from repsuite.faceswap.judging import SwapJudge, check_independent
from repsuite.faceswap.losses import ShapeLoss
from repsuite.faceswap.recon import KEPT_FIELDS, SHAPE_FIELDS
from repsuite.faceswap.synthetic import SyntheticFacesSpec, write_synthetic_faces
from tests.conftest import ROOT

SPEC = SyntheticFacesSpec(
    resolution=32, identities=4, images_per_identity=3, ffhq_images=4, eval_identities=3, eval_pairs=4,
    judge_images=24, recon_images=40,
)  # fmt: skip
TRAINER = [
    "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_synthetic_faces(tmp_path_factory.mktemp("faces"), SPEC)


def _fit(args: list[str], root: Path, steps: list[str] = ["--trainer.max_steps=2"]) -> tuple:  # noqa: B006
    cli = run_cli(["fit", *args, *TRAINER, *steps, f"--trainer.default_root_dir={root}"])
    return cli, next(root.glob("**/*.ckpt"))


@pytest.fixture(scope="module")
def recon(faces, tmp_path_factory):
    """A face-reconstruction network from a tiny `repsuite fit` run on ROOT/recon."""
    root = tmp_path_factory.mktemp("recon")
    return _fit(
        ["--model=FaceReconModule", "--model.input_size=32", "--model.augment_blur=1.0",
         "--data=FaceReconDataModule", f"--data.recon_root={faces / 'recon'}", "--data.resolution=32",
         "--data.batch_size=8"],
        root,
    )  # fmt: skip


def test_recon_trains_through_the_cli_and_reloads_weights_only(faces, recon):
    cli, ckpt = recon
    net = load_face_recon(ckpt)
    assert net.fields == SHAPE_FIELDS + KEPT_FIELDS and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    # the standardisation is the training set's, saved with the weights
    torch.testing.assert_close(net.mean, cli.model.recon.mean.cpu())
    assert (net.std != 1).all()
    faces_batch = torch.rand(3, 3, 32, 32) * 2 - 1
    shape, kept = net.standardised(faces_batch)
    assert shape.shape == (3, len(SHAPE_FIELDS)) and kept.shape == (3, len(KEPT_FIELDS))
    assert net(faces_batch).shape == (3, len(SHAPE_FIELDS) + len(KEPT_FIELDS))
    (metrics,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    assert {f"val/r2_{f}" for f in SHAPE_FIELDS + KEPT_FIELDS} <= set(metrics) and "val/mse" in metrics


def test_recon_errors_name_the_file_and_field(faces, recon, tmp_path):
    with pytest.raises(ValueError, match="'nope' is not a timm model"):
        FaceRecon(FaceReconConfig(backbone="nope"))
    with pytest.raises(ValueError, match=r"\['nose_colour'\] not in the data's identity_fields"):
        _fit(["--model=FaceReconModule", "--model.input_size=32", "--model.shape_fields=[nose_colour]",
              "--data=FaceReconDataModule", f"--data.recon_root={faces / 'recon'}", "--data.resolution=32",
              "--data.batch_size=8"], tmp_path / "bad")  # fmt: skip
    torch.save({"state_dict": {"judge.x": torch.zeros(1)}}, tmp_path / "judge.ckpt")
    with pytest.raises(CheckpointError, match=r"judge\.ckpt: not a FaceReconModule checkpoint"):
        load_face_recon(tmp_path / "judge.ckpt")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_face_recon(tmp_path / "missing.ckpt")


def test_shape_loss_is_zero_at_the_fused_coefficients_and_pulls_towards_them():
    loss = ShapeLoss(weight=2.0)
    src_shape, tgt_kept = torch.randn(4, 9), torch.randn(4, 4)
    assert loss(src_shape, tgt_kept, src_shape, tgt_kept) == 0
    swap_shape = torch.zeros(4, 9, requires_grad=True)
    value = loss(swap_shape, tgt_kept.clone(), src_shape, tgt_kept)
    torch.testing.assert_close(value, 2.0 * src_shape.abs().sum() / (4 * 13))
    value.backward()
    # the gradient moves each swap coefficient towards the source's shape
    assert torch.equal(swap_shape.grad.sign(), -src_shape.sign())


def test_swapper_trains_with_shape_aware_identity_and_reloads_it(faces, recon, tmp_path):
    _, recon_ckpt = recon
    _, idnet_ckpt = _fit(
        ["--model=IdentityModule", "--model.input_size=32", "--data=FaceIdentityDataModule",
         f"--data.vggface2_root={faces / 'vggface2_hq'}", "--data.resolution=32", "--data.batch_size=4"],
        tmp_path / "idnet",
    )  # fmt: skip
    cli, ckpt = _fit(
        ["--model=FaceSwapModule", "--model.random_prior=true", "--model.train_prior=true",
         "--model.narrow=0.0625", "--model.num_mlp=2", "--model.component_width=8",
         f"--model.id_encoder_ckpt={idnet_ckpt}", f"--model.shape_ckpt={recon_ckpt}",
         "--model.shape_weight=5",
         "--data=FaceSwapDataModule", f"--data.vggface2_root={faces / 'vggface2_hq'}",
         f"--data.val_pairs_root={faces / 'pairs'}", "--data.resolution=32", "--data.batch_size=2"],
        tmp_path / "swap", steps=["--trainer.max_epochs=1", "--trainer.limit_train_batches=2"],
    )  # fmt: skip
    m = cli.trainer.callback_metrics
    assert torch.isfinite(m["train/shape"]) and m["train/shape"] > 0
    assert torch.isfinite(m["val/shape_error"])
    module = cli.model.eval()
    # the generator is told the source's shape: 512 ArcFace dims + one per shape coefficient
    assert module.generator.cfg.id_dim == 512 + len(SHAPE_FIELDS)
    batch = next(iter(cli.datamodule.train_dataloader()))
    vec = module.identity_vector(batch["source"])
    shape, _ = load_face_recon(recon_ckpt).standardised(batch["source"])
    torch.testing.assert_close(vec[:, 512:], shape / len(SHAPE_FIELDS) ** 0.5)
    # the shape loss reaches the generator
    module.generator.zero_grad()
    swap = module.generator(batch["target"], vec)
    readings = module._shape_readings(batch)
    weighted = module._shape_term(swap, readings)
    # validation reports the unweighted error, whatever shape_weight is
    torch.testing.assert_close(module._shape_term(swap, readings, ShapeLoss(1.0)), weighted / 5)
    weighted.backward()
    grads = [p.grad.abs().sum() for p in module.generator.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0
    # the shape network is frozen and saved with the swapper (it embeds sources), so a checkpoint alone
    # rebuilds the same swapper, weights-only, without the shape network's file
    assert not any(p.requires_grad for p in module.shape_net.parameters())
    moved = Path(recon_ckpt).with_suffix(".moved")
    Path(recon_ckpt).rename(moved)
    try:
        again = type(module).from_checkpoint(ckpt)
    finally:
        moved.rename(recon_ckpt)
    src, tgt = batch["source"], batch["target"]
    torch.testing.assert_close(again.swap(src, tgt), module.swap(src, tgt))
    with pytest.raises(ValueError, match="not a timm model"):
        type(module)(
            resolution=32, random_prior=True, random_id_encoder=True, shape_arch={"backbone": "nope"},
            _arch_only=True,
        )  # fmt: skip


def test_a_judge_sharing_weights_with_the_shape_network_is_refused(faces, recon, tmp_path):
    _, recon_ckpt = recon
    net = load_face_recon(recon_ckpt)
    copy = tmp_path / "judge.ckpt"
    shutil.copy(recon_ckpt, copy)
    with pytest.raises(ValueError, match="is the swapper's training network"):
        check_independent(copy, recon_ckpt, net, SwapJudge(identity=net))
    other = load_face_recon(recon_ckpt)
    with torch.no_grad():
        for name, t in other.state_dict().items():
            if t.is_floating_point() and name != "backbone.layer3.0.conv1.weight":
                t.add_(1.0)
    torch.save({"x": 1}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"layer3\.0\.conv1\.weight .* is also in the training network"):
        check_independent(tmp_path / "other.ckpt", recon_ckpt, net, SwapJudge(identity=other))


def test_demo_shape_network_is_another_network_data_seed_and_run_than_the_judge():
    load = lambda name: yaml.safe_load((ROOT / "configs/faceswap" / name).read_text())  # noqa: E731
    recon, judge, swap = load("recon_demo.yaml"), load("judge_demo.yaml"), load("demo.yaml")
    assert recon["model"]["class_path"] == "FaceReconModule" != judge["model"]["class_path"]
    assert recon["seed_everything"] != judge["seed_everything"]
    assert recon["data"]["init_args"]["recon_root"].endswith("/recon")
    assert judge["data"]["init_args"]["judge_root"].endswith("/judge")
    assert recon["trainer"]["default_root_dir"] != judge["trainer"]["default_root_dir"]
    swapper = swap["model"]["init_args"]
    assert swapper["shape_ckpt"].startswith(recon["trainer"]["default_root_dir"])
    assert swapper["id_judge_ckpt"].startswith(judge["trainer"]["default_root_dir"])


def test_shape_loss_kept_weight_moves_the_pull_to_the_pose_at_the_same_scale():
    src_shape, tgt_kept = torch.randn(4, 9), torch.randn(4, 4)
    plain, posed = ShapeLoss(weight=1.0), ShapeLoss(weight=1.0, kept_weight=3.0)
    swap_shape = src_shape.clone().requires_grad_(True)
    swap_kept = torch.zeros(4, 4, requires_grad=True)
    # only the kept part is off: its share of the normalised mean is 4 / 13 plain, 12 / 21 weighted
    torch.testing.assert_close(
        plain(swap_shape, swap_kept, src_shape, tgt_kept), tgt_kept.abs().sum() / (4 * 13)
    )
    value = posed(swap_shape, swap_kept, src_shape, tgt_kept)
    torch.testing.assert_close(value, 3.0 * tgt_kept.abs().sum() / (4 * 21))
    # equal errors everywhere give the same value at any kept_weight: the scale is λ_shape's alone
    ones_s, ones_k = torch.ones(4, 9), torch.ones(4, 4)
    zeros_s, zeros_k = torch.zeros(4, 9), torch.zeros(4, 4)
    torch.testing.assert_close(
        posed(ones_s, ones_k, zeros_s, zeros_k), plain(ones_s, ones_k, zeros_s, zeros_k)
    )
    with pytest.raises(ValueError, match="kept_weight"):
        ShapeLoss(kept_weight=0.0)
