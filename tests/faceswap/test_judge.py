"""The independent judge: its data, training run, metrics, and that it never is the training encoder."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from repsuite.checkpoints import CheckpointError
from repsuite.cli import main, run_cli
from repsuite.faceswap import FaceJudgeDataModule, FaceSwapModule, load_arcface, load_judge
from repsuite.faceswap.data import FaceImageError, PairFolderDataset
from repsuite.faceswap.judging import check_independent, open_judge
from repsuite.faceswap.metrics import AttributeDistance, JudgedIdentity, ParameterTransfer
from repsuite.faceswap.synthetic import IDENTITY_FIELDS, SyntheticFacesSpec, write_synthetic_faces
from tests.conftest import ROOT

SPEC = SyntheticFacesSpec(
    resolution=32, identities=4, images_per_identity=3, ffhq_images=4, eval_identities=3, eval_pairs=6,
    judge_images=40, recon_images=40,
)  # fmt: skip


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_synthetic_faces(tmp_path_factory.mktemp("faces"), SPEC)


def _fit(args: list[str], root: str) -> tuple:
    trainer = [
        "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}",
    ]  # fmt: skip
    cli = run_cli(["fit", *args, *trainer])
    return cli, next(Path(root).glob("**/*.ckpt"))


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    """A judge and an identity encoder, each from its own tiny `repsuite fit` run."""
    work = tmp_path_factory.mktemp("runs")
    judge_cli, judge_ckpt = _fit(
        ["--model=FaceJudgeModule", "--model.width=8", "--model.input_size=32", "--data=FaceJudgeDataModule",
         f"--data.judge_root={faces / 'judge'}", "--data.resolution=32", "--data.batch_size=8"],
        str(work / "judge"),
    )  # fmt: skip
    _, idnet_ckpt = _fit(
        ["--model=IdentityModule", "--model.input_size=32", "--data=FaceIdentityDataModule",
         f"--data.vggface2_root={faces / 'vggface2_hq'}", "--data.resolution=32", "--data.batch_size=4"],
        str(work / "idnet"),
    )  # fmt: skip
    return judge_cli, judge_ckpt, idnet_ckpt


def test_synthetic_judge_faces_carry_their_parameters_and_the_pairs_their_truth(faces):
    meta = json.loads((faces / "judge/params.json").read_text())
    assert meta["identity_fields"] == list(IDENTITY_FIELDS) and len(meta["images"]) == 40
    entry = meta["images"]["images/00000.png"]
    assert len(entry["identity"]) == 18 and len(entry["attributes"]) == 8
    pairs = PairFolderDataset(faces / "pairs", 32)
    item = pairs[0]
    assert item["target_attributes"].shape == (8,) and item["target_identity"] != item["source_identity"]
    # the judge's faces are other identities than the swapper's training and evaluation faces
    labels = json.loads((faces / "pairs/identities.json").read_text())
    held_out = {tuple(v["source_identity_params"]) for v in labels.values()}
    judge_ids = {tuple(e["identity"]) for e in meta["images"].values()}
    assert not held_out & judge_ids


def test_judge_data_errors_name_the_file_and_field(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"identity_fields": ["a"], "attribute_fields": ["b"]}))
    with pytest.raises(FaceImageError, match=r"params\.json: missing field 'images'"):
        FaceJudgeDataModule(str(tmp_path))
    bad = {"identity_fields": ["a", "b"], "attribute_fields": ["c"], "images": {"x.png": {"identity": [1.0],
           "attributes": [0.0]}}}  # fmt: skip
    (tmp_path / "params.json").write_text(json.dumps(bad))
    with pytest.raises(FaceImageError, match=r"images\['x\.png'\]\.identity must be a list of 2 numbers"):
        FaceJudgeDataModule(str(tmp_path))
    with pytest.raises(FaceImageError, match="not found"):
        FaceJudgeDataModule(str(tmp_path / "nowhere"))


def test_judge_trains_through_the_cli_and_reloads_weights_only(faces, trained):
    judge_cli, judge_ckpt, _ = trained
    assert judge_cli.model.hparams.identity_dim == 18  # linked from the data
    assert judge_cli.model.hparams.attribute_dim == 8
    judge = load_judge(judge_ckpt)
    faces_batch = PairFolderDataset(faces / "pairs", 32)[0]["source"][None]
    model = judge_cli.model.judge.eval()
    for got, want in zip(judge(faces_batch), model(faces_batch), strict=True):
        torch.testing.assert_close(got, want)
    # standardisation statistics came from the training parameters, not the defaults
    assert not torch.equal(judge.identity_std, torch.ones(18))
    with pytest.raises(CheckpointError, match="not a FaceJudgeModule checkpoint"):
        load_judge(trained[2])  # an identity-encoder checkpoint


def test_judged_identity_counts_source_and_target_hits():
    colours = torch.eye(3)  # three identities, each a flat colour; the judge reads the mean colour
    face = lambda k: colours[k].view(1, 3, 1, 1).expand(1, 3, 4, 4)  # noqa: E731
    src_ids, tgt_ids = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    sources = torch.cat([face(k) for k in src_ids])
    targets = torch.cat([face(k) for k in tgt_ids])
    reader = torch.nn.Module()
    reader.forward = lambda x: x.mean((2, 3))
    metric = JudgedIdentity(reader)
    metric.update(sources, sources, targets, src_ids, tgt_ids)  # perfect swaps
    assert {k: v.item() for k, v in metric.compute().items()} == {"source": 100.0, "target": 0.0}
    metric.reset()
    swaps = torch.cat([sources[:1], targets[1:]])  # one swap carries the source, three copy the target
    metric.update(swaps, sources, targets, src_ids, tgt_ids)
    assert {k: v.item() for k, v in metric.compute().items()} == {"source": 25.0, "target": 75.0}
    with pytest.raises(ValueError, match="needs source_identity and target_identity"):
        metric.update(swaps, sources, targets, src_ids, torch.full((4,), -1))
    dist = AttributeDistance(reader)
    dist.update(sources, torch.zeros(4, 3))
    assert dist.compute().item() == pytest.approx(1.0)


def test_parameter_transfer_says_which_parameters_a_swap_carries():
    torch.manual_seed(0)
    src, tgt = torch.rand(40, 3), torch.rand(40, 3)
    # parameter 0 fully taken from the source, 1 kept from the target, 2 moved a quarter of the way
    swap = torch.stack([src[:, 0], tgt[:, 1], tgt[:, 2] + 0.25 * (src[:, 2] - tgt[:, 2])], dim=1)
    metric = ParameterTransfer()
    metric.update(swap[:20], src[:20], tgt[:20])
    metric.update(swap[20:], src[20:], tgt[20:])
    torch.testing.assert_close(metric.compute(), torch.tensor([1.0, 0.0, 0.25]))
    same = ParameterTransfer()
    same.update(tgt, tgt, tgt)  # no pair tells any parameter apart: no figure, not a division by zero
    assert same.compute().isnan().all()


def test_a_judge_is_never_the_training_encoder(trained, tmp_path):
    _, judge_ckpt, idnet_ckpt = trained
    encoder = load_arcface(idnet_ckpt)
    with pytest.raises(ValueError, match="is the swapper's training network"):
        check_independent(idnet_ckpt, idnet_ckpt, encoder, open_judge(idnet_ckpt))
    copy = tmp_path / "copy.ckpt"
    shutil.copy(idnet_ckpt, copy)
    with pytest.raises(ValueError, match="is the swapper's training network"):
        check_independent(copy, idnet_ckpt, encoder, open_judge(copy))
    # a different file holding one of the encoder's weights is refused too
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    other["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"]
    torch.save(other, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight .* is also in the training network"):
        check_independent(
            tmp_path / "backbone.pth", idnet_ckpt, encoder, open_judge(tmp_path / "backbone.pth")
        )
    check_independent(judge_ckpt, idnet_ckpt, encoder, open_judge(judge_ckpt))  # the real judge passes
    with pytest.raises(ValueError, match="is the swapper's training network"):
        FaceSwapModule(resolution=32, random_prior=True, narrow=0.0625, num_mlp=2,
                       id_encoder_ckpt=str(idnet_ckpt), id_judge_ckpt=str(idnet_ckpt))  # fmt: skip


def test_demo_judge_is_another_network_data_seed_and_run_than_the_encoder():
    load = lambda name: yaml.safe_load((ROOT / "configs/faceswap" / name).read_text())  # noqa: E731
    judge, idnet, swap = load("judge_demo.yaml"), load("idnet_demo.yaml"), load("demo.yaml")
    assert judge["model"]["class_path"] == "FaceJudgeModule" != idnet["model"]["class_path"]
    assert judge["seed_everything"] != idnet["seed_everything"]
    assert judge["data"]["init_args"]["judge_root"].endswith("/judge")
    assert judge["trainer"]["default_root_dir"] != idnet["trainer"]["default_root_dir"]
    assert judge["model"]["init_args"]["input_size"] != idnet["model"]["init_args"]["input_size"]
    swapper = swap["model"]["init_args"]
    assert swapper["id_judge_ckpt"].startswith(judge["trainer"]["default_root_dir"])
    assert swapper["id_encoder_ckpt"].startswith(idnet["trainer"]["default_root_dir"])


def test_swapper_validation_and_eval_report_the_judge_next_to_the_encoder(faces, trained, in_tmp, capsys):
    _, judge_ckpt, idnet_ckpt = trained
    cli = run_cli(
        ["fit", "--model=FaceSwapModule", "--model.random_prior=true",
         "--model.train_prior=true", "--model.narrow=0.0625", "--model.num_mlp=2",
         "--model.component_width=8", "--model.id_jitter=0.05",
         f"--model.id_encoder_ckpt={idnet_ckpt}", f"--model.id_judge_ckpt={judge_ckpt}",
         "--data=FaceSwapDataModule", f"--data.vggface2_root={faces / 'vggface2_hq'}",
         f"--data.val_pairs_root={faces / 'pairs'}", "--data.resolution=32", "--data.batch_size=2",
         "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.default_root_dir=swap"]
    )  # fmt: skip
    m = cli.trainer.callback_metrics
    for key in ("val/id_retrieval", "val/judge_source_top1", "val/judge_target_top1", "val/judge_pose_error",
                "val/judge_expression_error"):  # fmt: skip
        assert key in m and torch.isfinite(m[key]), key
    assert not any("judge" in k for k in cli.model.state_dict())  # the judge is no part of the swapper
    sweep = yaml.safe_load((ROOT / "configs/sweeps/faceswap_demo.yaml").read_text())
    assert sweep["metric"]["name"] == "val/judge_source_top1"  # the sweep optimises the judge's figure
    ckpt = next(in_tmp.glob("swap/**/*.ckpt"))
    capsys.readouterr()
    rc = main(["faceswap", "eval", str(faces / "pairs"), "--ckpt", str(ckpt), "--id-judge", str(judge_ckpt),
               "--json", "eval.json"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "independent judge (FaceJudge" in out and "ground-truth swaps" in out and "copy the target" in out
    assert "the swapper's own training encoder" in out
    res = json.loads((in_tmp / "eval.json").read_text())
    assert res["judge_chance"] == pytest.approx(100 / 3)
    for prefix in ("judge", "judge_ground_truth", "judge_copy_target", "judge_copy_source"):
        for key in ("source_top1", "target_top1", "pose_error", "expression_error"):
            assert f"{prefix}_{key}" in res
    assert "identity parameters the swaps carry" in out and "eye_spacing" in out
    for field in IDENTITY_FIELDS:
        assert f"judge_transfer_{field}" in res and f"judge_ground_truth_transfer_{field}" in res
    assert (
        main(["faceswap", "eval", str(faces / "pairs"), "--ckpt", str(ckpt), "--id-judge", "nope.ckpt"]) == 1
    )


def test_a_judge_saved_before_the_mouth_crop_still_loads(tmp_path):
    from repsuite.faceswap.judge import FaceJudge, FaceJudgeConfig

    old = FaceJudge(FaceJudgeConfig(input_size=32, width=8, mouth_branch=False))
    hp = {"identity_dim": 18, "attribute_dim": 8, "input_size": 32, "width": 8}  # no mouth_branch key then
    state = {f"judge.{k}": v for k, v in old.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "old.ckpt")
    judge = load_judge(tmp_path / "old.ckpt")
    assert judge.mouth is None
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(judge(x)[1], old.eval()(x)[1])


def test_linear_probe_reads_what_the_embedding_holds_and_nothing_else():
    from repsuite.faceswap.judging import linear_probe_r2

    torch.manual_seed(0)
    emb = torch.randn(400, 16)
    readable = emb @ torch.randn(16, 2) + 0.01 * torch.randn(400, 2)  # linear in the embedding
    hidden = torch.randn(400, 1)  # independent of it
    r2 = linear_probe_r2(emb, torch.cat([readable, hidden], dim=1))
    assert r2[:2].min() > 0.99 and r2[2] < 0.05
    with pytest.raises(ValueError, match="too few"):
        linear_probe_r2(emb[:3], hidden[:3])


def test_probe_tool_prints_r2_per_identity_parameter(faces, tmp_path, capsys):
    from repsuite.faceswap.arcface import iresnet

    enc = tmp_path / "backbone.pth"
    torch.save(iresnet(18, input_size=32).state_dict(), enc)
    out = tmp_path / "probe.json"
    assert main(["faceswap", "probe", str(enc), "--faces", str(faces / "judge"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "linear-probe R²" in printed and all(f in printed for f in IDENTITY_FIELDS)
    figures = json.loads(out.read_text())[str(enc)]
    assert list(figures) == list(IDENTITY_FIELDS) and all(v <= 1 for v in figures.values())
