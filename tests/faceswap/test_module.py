"""FaceSwapModule / IdentityModule via the real CLI on synthetic faces, the data pipeline and the tools."""

import json
import os
import shutil

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from PIL import Image

from repsuite.cli import main, run_cli
from repsuite.faceswap import FaceSwapDataModule, FaceSwapModule, load_arcface
from repsuite.faceswap.data import FaceImageError, PairFolderDataset
from tests.faceswap.fixtures import TINY_MODEL, TRAINER, _data
from tests.faceswap.test_stylegan2 import gfpgan_generator_keys, random_state


def test_fit_logs_every_term_and_the_grid_and_reloads_from_the_checkpoint(faces, in_tmp):
    cli = run_cli(["fit", *TINY_MODEL, *_data(faces), *TRAINER, "--trainer.default_root_dir=run"])
    assert cli.model.hparams.resolution == 32 == cli.datamodule.resolution  # given once, in the data section
    m = cli.trainer.callback_metrics
    for key in (
        "train/g_adv",
        "train/id",
        "train/recon",
        "train/fm",
        "train/g_left_eye",
        "train/g_mouth",
        "train/d_adv",
        "train/d_right_eye",
        "train/r1",
        "val/id_retrieval",
        "val/id_cosine",
        "val/psnr",
        "val/psnr_copy_target",
        "val/psnr_copy_source",
    ):
        assert key in m and torch.isfinite(m[key]), key
    grid = next(in_tmp.glob("run/**/swap_grid.png"))
    assert Image.open(grid).size == (3 * 32 + 4 * 2, 3 * 32 + 4 * 2)  # 2 sources x 2 targets + headers
    ckpt = next(in_tmp.glob("run/**/*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert "generator_ema.module.stylegan.constant_input.weight" in state["state_dict"]
    reloaded = FaceSwapModule.from_checkpoint(ckpt)
    pairs = PairFolderDataset(faces / "pairs", 32)
    s, t = pairs[0]["source"][None], pairs[0]["target"][None]
    torch.testing.assert_close(reloaded.swap(s, t), cli.model.eval().swap(s, t))


class NaNOnStep(FaceSwapModule):
    """Makes the generator loss non-finite on chosen iterations (``nan_steps``, counted from 0)."""

    nan_steps: tuple[int, ...] = ()
    nan_grad_steps: tuple[int, ...] = ()  # a finite loss (0) whose gradient is NaN: sqrt'(0) · abs'(0)

    def generator_losses(self, batch, swap, id_src, **kwargs):
        terms = super().generator_losses(batch, swap, id_src, **kwargs)
        if self.iteration in self.nan_steps:
            terms["id"] = terms["id"] * float("nan")
        if self.iteration in self.nan_grad_steps:
            terms["bad_grad"] = (swap - swap.detach()).abs().sqrt().sum()
        return terms


class GradNorms(Callback):
    """Records each optimizer's gradient norm right before it steps."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def _fit_module(module, faces, root, steps, callbacks=()):
    dm = FaceSwapDataModule(
        vggface2_root=str(faces / "vggface2_hq"),
        resolution=32,
        batch_size=2,
        val_pairs_root=str(faces / "pairs"),
    )
    trainer = Trainer(
        accelerator="cpu", max_steps=2 * steps, limit_val_batches=0, logger=False, callbacks=list(callbacks),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, dm)
    return trainer


TINY_KW = dict(
    resolution=32, random_prior=True, train_prior=True, random_id_encoder=True, narrow=0.0625, num_mlp=2,
    component_width=8, ema_decay=None,
)  # fmt: skip


def test_adv_weight_scales_the_global_and_the_component_adversarial_terms():
    torch.manual_seed(0)
    plain = FaceSwapModule(**TINY_KW)
    weighted = FaceSwapModule(**(TINY_KW | {"adv_weight": 0.5, "component_weight": 3.0}))
    weighted.load_state_dict(plain.state_dict())
    batch = {
        "source": torch.rand(2, 3, 32, 32) * 2 - 1,
        "target": torch.rand(2, 3, 32, 32) * 2 - 1,
        "same_identity": torch.tensor([True, False]),
    }
    swap, id_src = batch["target"].clone(), torch.randn(2, 512)
    a = plain.generator_losses(batch, swap, id_src)
    b = weighted.generator_losses(batch, swap, id_src)
    torch.testing.assert_close(b["g_adv"], 0.5 * a["g_adv"])
    for name in ("g_left_eye", "g_right_eye", "g_mouth"):  # Eq. 3.12's λ_adv scales all of Eq. 3.10
        torch.testing.assert_close(b[name], 1.5 * a[name])
    torch.testing.assert_close(b["recon"], a["recon"])


def test_one_discriminator_pass_over_the_targets_serves_both_steps(faces, tmp_path):
    torch.manual_seed(0)
    module = FaceSwapModule(**(TINY_KW | {"r1_every": 1}))
    batch = {
        "source": torch.rand(2, 3, 32, 32) * 2 - 1,
        "target": torch.rand(2, 3, 32, 32) * 2 - 1,
        "same_identity": torch.tensor([True, False]),
    }
    swap, id_src = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 512)
    real, real_logits, real_feats = module._read_real(batch, r1=True)
    shared = module.generator_losses(batch, swap, id_src, real_features=real_feats)
    separate = module.generator_losses(batch, swap, id_src)
    for name in separate:
        torch.testing.assert_close(shared[name], separate[name], rtol=0, atol=0)
    shared = module.discriminator_losses(batch, swap, r1=True, real=(real, real_logits))
    separate = module.discriminator_losses(batch, swap, r1=True)
    assert set(shared) == set(separate) and "r1" in shared
    for name in separate:
        torch.testing.assert_close(shared[name], separate[name], rtol=0, atol=0)

    # in training, the discriminator runs three times per step: swaps (G step), targets (shared), swaps (D);
    # with share_real_pass off, four (the targets once per step each). Both train to the same weights.
    states = []
    for share, per_step in ((True, 3), (False, 4)):
        torch.manual_seed(0)
        module = FaceSwapModule(**(TINY_KW | {"share_real_pass": share}))
        calls = []
        module.discriminator.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(1)
        _fit_module(module, faces, tmp_path / str(share), steps=2)
        assert len(calls) == 2 * per_step
        states.append(module.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)


def test_ema_generator_averages_with_the_configured_decay_and_reads_old_checkpoints():
    torch.manual_seed(0)
    module = FaceSwapModule(**(TINY_KW | {"ema_decay": 0.9}))
    weight = module.generator.final_conv.weight
    start = weight.detach().clone()
    hand = start.clone()  # the former hand-written EMA: a copy at construction, then a lerp every step
    with torch.no_grad():
        for step in range(60):
            weight.add_(torch.randn_like(weight) * 0.1)  # a training step
            module.generator_ema.update_parameters(module.generator)
            hand.lerp_(weight, 0.1)
            if step == 0:
                first_step = (weight - start).abs()
    ema = module.swap_generator().final_conv.weight
    # AveragedModel copies at its first update instead: the two differ by 0.9^60 (0.002) of that first step
    # (exactly), far inside the step-to-step noise, so validation figures stay the same within noise
    torch.testing.assert_close((ema - hand).abs(), 0.9**60 * first_step, rtol=1e-3, atol=1e-6)
    assert not torch.equal(ema, weight) and not torch.equal(ema, start)
    # a checkpoint that kept the EMA generator as a plain copy (generator_ema.<name>) still loads
    state = module.state_dict()
    old = {k.replace("generator_ema.module.", "generator_ema."): v for k, v in state.items()}
    del old["generator_ema.n_averaged"]
    fresh = FaceSwapModule(**(TINY_KW | {"ema_decay": 0.9}))
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.swap_generator().final_conv.weight, ema)


def test_non_finite_steps_are_skipped_counted_and_stop_a_diverged_run(faces, tmp_path):
    torch.manual_seed(0)
    module = NaNOnStep(**TINY_KW, max_skipped_steps=3)
    module.nan_steps = (1,)
    before = {}

    class Snapshot(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before[batch_idx] = [p.detach().clone() for p in pl_module.generator.trainable_parameters()]

    trainer = _fit_module(module, faces, tmp_path, steps=3, callbacks=[Snapshot()])
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1  # the G step; D saw a finite swap
    after_skip = before[2]
    for a, b in zip(before[1], after_skip, strict=True):  # the skipped step left the generator unchanged
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # a finite loss with a non-finite gradient: caught after backward, before the optimizer steps
    torch.manual_seed(0)
    module = NaNOnStep(**TINY_KW, max_skipped_steps=3)
    module.nan_grad_steps = (1,)
    before.clear()
    trainer = _fit_module(module, faces, tmp_path, steps=3, callbacks=[Snapshot()])
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1
    assert float(trainer.callback_metrics["train/bad_grad"]) == 0
    for a, b in zip(before[1], before[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    diverging = NaNOnStep(**TINY_KW, max_skipped_steps=3)
    diverging.nan_steps = tuple(range(100))
    with pytest.raises(RuntimeError, match="3 training steps in a row had a non-finite loss"):
        _fit_module(diverging, faces, tmp_path, steps=5)


def test_grad_clip_bounds_both_optimizers_and_is_refused_under_a_loss_scaler(faces, tmp_path):
    torch.manual_seed(0)
    clipped, free = GradNorms(), GradNorms()
    _fit_module(FaceSwapModule(**TINY_KW, grad_clip=1e-3), faces, tmp_path, steps=2, callbacks=[clipped])
    torch.manual_seed(0)
    _fit_module(FaceSwapModule(**TINY_KW), faces, tmp_path, steps=2, callbacks=[free])
    assert len(clipped.norms) == 4 and max(clipped.norms) <= 1e-3 * 1.001
    assert min(free.norms) > 1e-2  # the clip had something to do
    module = FaceSwapModule(**TINY_KW, grad_clip=1.0)
    module._loss_scaler = lambda: object()  # what 16-mixed precision installs
    with pytest.raises(ValueError, match="grad_clip is not supported with precision='16-mixed'"):
        module.on_fit_start()


def test_prior_learning_rate_applies_to_the_prior_only():
    module = FaceSwapModule(**TINY_KW, lr=1e-3, prior_lr=1e-2)
    opt_g, opt_d = module.configure_optimizers()
    rest, prior = opt_g.param_groups
    assert (rest["lr"], prior["lr"], opt_d.param_groups[0]["lr"]) == (1e-3, 1e-2, 1e-3)
    assert {id(p) for p in prior["params"]} == {id(p) for p in module.generator.stylegan.parameters()}
    assert len(rest["params"]) + len(prior["params"]) == len(module.generator.trainable_parameters())
    frozen = FaceSwapModule(**(TINY_KW | {"train_prior": False}), prior_lr=1e-2)
    assert len(frozen.configure_optimizers()[0].param_groups) == 1  # a frozen prior is not optimised


def test_missing_weights_and_resolution_mismatch_are_explained(tmp_path):
    with pytest.raises(ValueError, match="needs prior_ckpt"):
        FaceSwapModule(resolution=32, random_id_encoder=True)
    with pytest.raises(ValueError, match="needs id_encoder_ckpt"):
        FaceSwapModule(resolution=32, random_prior=True, narrow=0.0625, num_mlp=2)
    torch.save(
        {"params_ema": random_state(gfpgan_generator_keys(64, 1, 0.0625, 512, 2))}, tmp_path / "prior.pth"
    )
    with pytest.raises(
        ValueError, match=r"resolution 32 does not match the StyleGAN2 prior \(64 px from .*prior\.pth\)"
    ):
        FaceSwapModule(resolution=32, prior_ckpt=str(tmp_path / "prior.pth"), random_id_encoder=True)
    m = FaceSwapModule(resolution=64, prior_ckpt=str(tmp_path / "prior.pth"), random_id_encoder=True)
    assert m.generator.stylegan.cfg.num_mlp == 2 and m.architecture()["narrow"] == 0.0625
    assert m.hparams.narrow == 1.0  # the hyper-parameters keep what was given
    # the checkpoint carries the prior's sizes: it rebuilds after the prior file is gone
    ckpt = {"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    (tmp_path / "prior.pth").unlink()
    rebuilt = FaceSwapModule._from_state(ckpt)
    assert rebuilt.generator.stylegan.cfg.narrow == 0.0625


def test_datamodule_counts_bad_images_and_handles_singletons(faces, tmp_path, caplog):
    root = tmp_path / "vgg"
    shutil.copytree(faces / "vggface2_hq", root)
    (root / "n000000/broken.jpg").write_bytes(b"not an image")
    Image.new("L", (32, 32)).save(root / "n000001/grey.png")
    Image.new("RGB", (32, 40)).save(root / "n000002/wide.png")
    dm = FaceSwapDataModule(
        vggface2_root=str(root), resolution=32, same_identity_ratio=1.0, val_pairs_root=str(faces / "pairs")
    )
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert dm.skipped == {"unreadable": 1, "not RGB": 1, "not square": 1}
    assert "broken.jpg" in caplog.text and "grey.png" in caplog.text
    ds = dm.train_set
    single = next(i for i, f in enumerate(ds.images) if len(ds.by_identity[f.identity]) == 1)
    item = ds[single]
    assert item["same_identity"] and item["same_image"]  # a singleton pairs with itself
    other = next(i for i, f in enumerate(ds.images) if len(ds.by_identity[f.identity]) > 1)
    assert not ds[other]["same_image"] and torch.isfinite(ds[other]["target_landmarks"]).all()
    ffhq_only = FaceSwapDataModule(ffhq_root=str(faces / "ffhq"), resolution=16, val_pairs=2)
    ffhq_only.setup("fit")
    batch = next(iter(ffhq_only.train_dataloader()))
    assert batch["source"].shape[-1] == 16 and (batch["source_identity"] == -1).all()
    first = ffhq_only.train_set[0]["target_landmarks"]  # landmarks follow the resize (32 -> 16 px)
    torch.testing.assert_close(first, ffhq_only.train_set.images[0].landmarks * 0.5)
    with pytest.raises(ValueError, match="give vggface2_root, ffhq_root or both"):
        FaceSwapDataModule()
    (root / "n000003").mkdir(exist_ok=True)
    (root / "landmarks.json").write_text(json.dumps({"n000000/0000.jpg": [[1, 2]]}))
    with pytest.raises(FaceImageError, match=r"landmarks\.json: entry 'n000000/0000\.jpg' must be 5"):
        FaceSwapDataModule(vggface2_root=str(root), resolution=32).setup("fit")


@pytest.mark.slow
def test_identity_encoder_training_feeds_the_swapper(faces, in_tmp):
    cli = run_cli(
        [
            "fit",
            "--model=IdentityModule",
            "--data=FaceIdentityDataModule",
            f"--data.vggface2_root={faces / 'vggface2_hq'}",
            "--data.resolution=32",
            "--data.batch_size=4",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.default_root_dir=idnet",
        ]
    )
    assert cli.model.hparams.num_classes == 5  # linked from the data (4 identities + the singleton)
    ckpt = next(in_tmp.glob("idnet/**/*.ckpt"))
    net = load_arcface(ckpt)
    torch.testing.assert_close(net.fc.weight, cli.model.backbone.fc.weight)
    swapper = FaceSwapModule(
        resolution=32, random_prior=True, narrow=0.0625, num_mlp=2, id_encoder_ckpt=str(ckpt)
    )
    assert swapper.architecture()["id_encoder_depth"] == 18
    assert swapper.architecture()["id_encoder_input_size"] == cli.model.hparams.input_size


def test_identity_module_from_python_saves_its_head_size(faces, tmp_path):
    """Without the CLI's link, the head's size comes from the data and travels in the checkpoint."""
    from repsuite.faceswap import FaceIdentityDataModule, IdentityModule

    dm = FaceIdentityDataModule(vggface2_root=str(faces / "vggface2_hq"), resolution=32, batch_size=4)
    module = IdentityModule(input_size=32, augment=0.05)
    trainer = Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, dm)
    assert module.hparams.num_classes is None  # the hyper-parameters keep what was given
    faces = torch.rand(4, 3, 32, 32) * 2 - 1
    assert module._augmented(faces).shape == faces.shape and not torch.equal(module._augmented(faces), faces)
    ckpt = next(tmp_path.glob("**/*.ckpt"))
    reloaded = IdentityModule.load_from_checkpoint(ckpt, weights_only=True)
    assert reloaded.head.weight.shape[0] == dm.num_classes
    torch.testing.assert_close(reloaded.head.weight, module.head.weight)


def test_colour_augmentation_changes_colour_not_layout():
    from repsuite.faceswap import IdentityModule

    torch.manual_seed(0)
    faces = torch.rand(8, 3, 32, 32) * 2 - 1
    assert torch.equal(IdentityModule(input_size=32)._augmented(faces), faces)
    out = IdentityModule(input_size=32, augment_colour=0.3)._augmented(faces)
    assert out.shape == faces.shape and out.min() >= -1 and out.max() <= 1
    colour = (out.mean((2, 3)) - faces.mean((2, 3))).abs().mean()
    assert colour > 0.02  # the faces' colours moved
    # the layout did not: per-image pixel ranks of brightness stay strongly correlated
    a, b = faces.mean(1).flatten(1), out.mean(1).flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    assert ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).min() > 0.5


def test_blur_augmentation_blurs_some_faces_and_keeps_their_mean():
    from repsuite.faceswap import IdentityModule

    torch.manual_seed(0)
    faces = torch.rand(64, 3, 32, 32) * 2 - 1
    out = IdentityModule(input_size=32, augment_blur=1.5)._augmented(faces)
    detail = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))  # noqa: E731  (B,) edge energy
    changed = (out - faces).flatten(1).abs().amax(1) > 1e-5  # (B,)
    assert 10 < changed.sum() < 54  # about half the faces (p = 0.5), never all or none
    assert (detail(out[changed]) < detail(faces[changed])).all()  # those lost detail: blurred, not shifted
    torch.testing.assert_close(out.mean((2, 3)), faces.mean((2, 3)), atol=0.03, rtol=0)


@pytest.fixture(scope="module")
def photo(faces, tmp_path_factory):
    """A target face pasted into a larger photo, and its 5 landmarks as the CLI takes them."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    img = Image.new("RGB", (90, 70), (40, 90, 140))
    img.paste(Image.open(faces / "pairs/target/0001.png").resize((48, 48)), (20, 10))
    img.save(path)
    marks = json.loads((faces / "ffhq/landmarks.json").read_text())["images1024x1024/00000/00000.png"]
    return path, " ".join(f"{20 + x * 1.5},{10 + y * 1.5}" for x, y in marks)


def _swap(ckpt, source, target, out, *extra):
    return main(["faceswap", "swap", "--ckpt", str(ckpt), "--source", str(source), "--target", str(target),
                 "-o", str(out), *extra])  # fmt: skip


@pytest.mark.slow
def test_swap_tool_pairs_folders_and_photos_with_provenance(faces, tiny_ckpt, photo, tmp_path):
    pairs = faces / "pairs"
    out = tmp_path / "one.png"
    assert _swap(tiny_ckpt, pairs / "source/0000.png", pairs / "target/0000.png", out) == 0
    info = Image.open(out).text
    assert (
        info["synthetic"] == "true" and len(info["repsuite-checkpoint-sha256"]) == 64 and "repsuite" in info
    )
    assert _swap(tiny_ckpt, pairs / "source", pairs / "target", tmp_path / "folder") == 0
    assert len(list((tmp_path / "folder").glob("*.png"))) == 4
    # a photo with landmarks: aligned, swapped, pasted back at the photo's size
    path, lm = photo
    assert (
        _swap(tiny_ckpt, pairs / "source/0001.png", path, tmp_path / "ps.png", "--target-landmarks", lm) == 0
    )
    assert Image.open(tmp_path / "ps.png").size == (90, 70)


@pytest.mark.slow
def test_align_tool_crops_a_photo(photo, tmp_path):
    path, lm = photo
    args = [str(path), "--landmarks", lm, "--size", "32", "-o", str(tmp_path / "crop.png")]
    assert main(["faceswap", "align", *args, "--matrix", str(tmp_path / "m.json")]) == 0
    assert Image.open(tmp_path / "crop.png").size == (32, 32)


@pytest.mark.slow
def test_eval_tool_prints_scores_writes_json_and_a_grid(faces, tiny_ckpt, tmp_path, capsys):
    pairs = faces / "pairs"
    capsys.readouterr()
    assert (
        main(
            [
                *("faceswap", "eval", str(pairs), "--ckpt", tiny_ckpt, "--fid"),
                *("--json", str(tmp_path / "r.json"), "--grid", str(tmp_path / "grid.png")),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "ID retrieval" in text and "(chance 33.33%)" in text and "copy target" in text
    res = json.loads((tmp_path / "r.json").read_text())
    keys = {"id_retrieval", "id_cosine", "psnr_swap", "psnr_copy_target", "psnr_copy_source", "fid"}
    assert keys | {"id_retrieval_ground_truth"} <= set(res)
    grid = Image.open(tmp_path / "grid.png")
    # grid_size 2: two sources of different identities, two targets, plus the header row and column
    assert grid.size == (3 * 32 + 4 * 2, 3 * 32 + 4 * 2) and grid.text["content"] == "swap grid"
    picked = grid.text["pairs"].split(",")
    labels = json.loads((pairs / "identities.json").read_text())
    assert len({labels[n]["source_identity"] for n in picked}) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("pickled checkpoint", "--trust-checkpoint"),
        ("swap to a JPEG", "use a .png name"),
        ("grid to a JPEG", "use a .png name"),
        ("two landmarks", "expected 5 points"),
    ],
)
def test_tool_errors_are_explained(case, message, faces, tiny_ckpt, photo, tmp_path, capsys):
    face = faces / "pairs/source/0000.png"
    if case == "pickled checkpoint":
        torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.ckpt")
        rc = _swap(tmp_path / "pickled.ckpt", face, face, tmp_path / "x.png")
    elif case == "swap to a JPEG":
        rc = _swap(tiny_ckpt, face, face, tmp_path / "x.jpg")
    elif case == "grid to a JPEG":
        rc = main(
            ["faceswap", "eval", str(faces / "pairs"), "--ckpt", tiny_ckpt, "--grid", str(tmp_path / "g.jpg")]
        )
    else:
        rc = main(
            ["faceswap", "align", str(photo[0]), "--landmarks", "1,2 3,4", "-o", str(tmp_path / "c.png")]
        )
    assert rc == 1
    assert message in capsys.readouterr().err


class DtypeProbe(Callback):
    """Records the output dtypes of the generator's first conv and of the global discriminator."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_fit_start(self, trainer, pl_module) -> None:
        for layer in (pl_module.generator.conv_body_first, pl_module.discriminator):
            layer.register_forward_hook(self._record)

    def _record(self, module, args, out) -> None:
        self.seen.add(str((out[0] if isinstance(out, tuple) else out).dtype))  # D may return features


def test_bf16_mixed_fit_runs_the_networks_in_bf16(faces, in_tmp):
    probe = DtypeProbe()
    bf16 = ["--trainer.precision=bf16-mixed", "--model.grad_clip=1", "--model.channels_last=true"]
    short = ["--trainer.limit_train_batches=1", "--trainer.num_sanity_val_steps=0"]  # bf16 is slow on CPU
    cli = run_cli([*TINY_MODEL, *_data(faces), *TRAINER, *bf16, *short], run=False)
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, cli.datamodule)
    m = cli.trainer.callback_metrics
    assert "torch.bfloat16" in probe.seen
    # channels_last: weights (and so the convolutions' outputs) stored NHWC, the EMA copy included
    for net in (cli.model.generator, cli.model.generator_ema.module, cli.model.discriminator):
        convs = [p for p in net.parameters() if p.ndim == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for key in ("train/loss_g", "train/loss_d", "train/r1", "val/psnr"):
        assert torch.isfinite(m[key]), key
    assert float(m["train/skipped_steps"]) == 0


@pytest.mark.slow  # TorchInductor compiles each graph on first use: minutes on a 2-core CPU
def test_compile_switch_runs_the_generator_compiled_with_plain_checkpoint_keys(faces, in_tmp):
    """``--model.compile=true``: the generator's forward runs through TorchInductor, equal to eager."""
    short = ["--trainer.limit_train_batches=1", "--trainer.num_sanity_val_steps=0", "--model.compile=true"]
    cli = run_cli(["fit", *TINY_MODEL, *_data(faces), *TRAINER, *short, "--trainer.default_root_dir=run"])
    g = cli.model.generator
    assert g._compiled_call_impl is not None  # nn.Module.compile() in place; the discriminators stay eager
    assert cli.model.discriminator._compiled_call_impl is None
    m = cli.trainer.callback_metrics
    assert torch.isfinite(m["train/loss_g"]) and torch.isfinite(m["train/loss_d"])
    state = torch.load(next(in_tmp.glob("run/**/*.ckpt")), weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)
    batch = next(iter(cli.datamodule.val_dataloader()))
    ids = cli.model.identity_vector(batch["source"])
    g.eval()
    with torch.no_grad():  # fixed noise: the compiled and eager passes see the same inputs
        compiled = g(batch["target"], ids, randomize_noise=False)
        eager = g.forward(batch["target"], ids, randomize_noise=False)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


class WeightDigest(Callback):
    """Each rank writes a digest of its generator and discriminator weights when training ends."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        digest = {
            name: float(sum(p.double().sum() for p in getattr(pl_module, name).parameters()))
            for name in ("generator", "discriminator", "components")
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(
            json.dumps(digest | {"pid": os.getpid()})
        )


@pytest.mark.slow
def test_ddp_spawn_two_processes_train_the_swapper(faces, in_tmp):
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp_spawn", "--trainer.default_root_dir=ddp"]
    cli = run_cli([*TINY_MODEL, *_data(faces), *TRAINER, *ddp, "--model.grad_clip=1"], run=False)
    cli.trainer.callbacks.append(WeightDigest(in_tmp))
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.world_size == 2
    m = cli.trainer.callback_metrics
    assert torch.isfinite(m["train/loss_g"]) and torch.isfinite(m["val/id_retrieval"])
    assert float(m["train/skipped_steps"]) == 0
    ckpt = torch.load(next(in_tmp.glob("ddp/**/*.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 4  # 2 iterations x (G + D) steps, the same on both ranks
    r0, r1 = (json.loads((in_tmp / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0.pop("pid") != r1.pop("pid")
    assert r0 == r1  # gradients were all-reduced: both ranks hold the same weights


def test_several_identity_encoders_join_their_embeddings_and_rebuild_from_the_checkpoint(tmp_path):
    """id_encoder_ckpt as a list: the generator reads both, the loss asks both, no file is needed later."""
    from repsuite.faceswap.arcface import iresnet

    torch.manual_seed(0)
    paths = []
    for name, size in (("head", 32), ("inner", 48)):
        path = tmp_path / f"{name}.pth"
        torch.save(iresnet(18, input_size=size).state_dict(), path)  # arcface_torch backbone.pth layout
        paths.append(str(path))
    module = FaceSwapModule(**(TINY_KW | {"random_id_encoder": False, "id_encoder_ckpt": paths}))
    assert module.generator.cfg.id_dim == 1024 and module.embedder.dim == 1024
    faces = torch.rand(3, 3, 32, 32) * 2 - 1
    other = torch.rand(3, 3, 32, 32) * 2 - 1
    e, f = module.embedder(faces), module.embedder(other)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    each = [torch.nn.functional.cosine_similarity(net_e, net_f, dim=-1)
            for net_e, net_f in zip(e.split(512, -1), f.split(512, -1), strict=True)]  # fmt: skip
    # the identity loss on the joined embedding is the mean of the two encoders' losses
    torch.testing.assert_close(
        module.id_loss(e, f), module.id_loss.weight * (1 - (each[0] + each[1]) / 2).mean()
    )
    swap = module.eval().swap(faces, other)
    state = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    module.on_save_checkpoint(state)
    assert state["faceswap_architecture"]["id_encoder_extra_arch"] == [[18, 48, 1.0]]
    ckpt = tmp_path / "swapper.ckpt"
    torch.save(state, ckpt)
    for p in paths:
        os.remove(p)
    torch.testing.assert_close(FaceSwapModule.from_checkpoint(ckpt).swap(faces, other), swap)
