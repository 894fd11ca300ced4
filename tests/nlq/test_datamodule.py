import pytest
import torch

from repsuite.nlq.datamodule import Ego4DNLQDataModule
from repsuite.nlq.features import FeatureError
from tests.conftest import ROOT

DATA = str(ROOT / "tests/data/ego4d_nlq")
FEATS = ["slowfast8x8_r101_k400", "clip_vitb16"]


def test_dims_are_read_from_the_files():
    dm = Ego4DNLQDataModule(DATA, features=FEATS)
    assert dm.video_dim == 24 and dm.text_dim == 0
    dm = Ego4DNLQDataModule(
        DATA, features=FEATS[:1], temporal_position=True, text="features", text_features="clip_text_vitb16"
    )
    assert dm.video_dim == 18 and dm.text_dim == 8


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_loaders_per_stage(stage):
    dm = Ego4DNLQDataModule(DATA, features=FEATS, batch_size=3, eval_batch_size=2)
    dm.setup(stage)
    loader = {
        "fit": dm.train_dataloader,
        "validate": dm.val_dataloader,
        "test": dm.test_dataloader,
        "predict": dm.predict_dataloader,
    }[stage]()
    batch = next(iter(loader))
    assert batch["video"].shape[-1] == 24 and batch["video"].shape[0] == (3 if stage == "fit" else 2)
    if stage == "predict":  # the unannotated test file has no labels
        assert (batch["start"] == -1).all()
    else:
        assert (batch["start"] >= 0).all() and (batch["end"] >= batch["start"]).all()


def test_training_filters_are_counted_and_logged(tmp_path, caplog):
    import json
    import shutil

    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    path = root / "v2/annotations/nlq_train.json"
    data = json.loads(path.read_text())
    lq = data["videos"][0]["clips"][0]["annotations"][0]["language_queries"]
    lq[0]["clip_end_sec"] = lq[0]["clip_start_sec"]  # zero-length
    lq[1]["query"] = None
    path.write_text(json.dumps(data))
    dm = Ego4DNLQDataModule(
        str(root), features=FEATS, drop_zero_length_train=True, drop_empty_query_train=True
    )
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert dm.datasets["train"].annotations.dropped["zero-length window"] == 1
    assert dm.datasets["train"].annotations.dropped["no query text"] == 1
    assert len(dm.datasets["val"]) == 4  # filters apply to training only
    assert "dropped: 1 zero-length window, 1 no query text" in caplog.text


def test_bad_roots_are_clear():
    with pytest.raises(FileNotFoundError, match=r"v1/annotations: not found"):
        Ego4DNLQDataModule(DATA, version="v1")
    with pytest.raises(FeatureError, match="feature folder for source 'omnivore_video_swinl' does not exist"):
        Ego4DNLQDataModule(DATA, features=["omnivore_video_swinl"])
    with pytest.raises(ValueError, match="needs `text_features`"):
        Ego4DNLQDataModule(DATA, text="features")


def test_datamodule_is_reachable_from_the_cli(in_tmp, capsys):
    from repsuite.cli import run_cli
    from tests.conftest import TOY_MODEL

    with pytest.raises(SystemExit) as exc:
        run_cli(
            [
                "fit",
                "--model",
                TOY_MODEL,
                "--data",
                "Ego4DNLQDataModule",
                f"--data.root={DATA}",
                "--data.features=[slowfast8x8_r101_k400, clip_vitb16]",
                "--print_config",
            ]
        )
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Ego4DNLQDataModule" in out and "max_video_len: 600" in out and "clip_vitb16" in out


def test_missing_feature_files_fail_early_or_are_skipped_with_counts(tmp_path, caplog):
    import shutil

    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    val_video = sorted((root / "v2/slowfast8x8_r101_k400").glob("val-*.pt"))[0]
    train_video = sorted((root / "v2/slowfast8x8_r101_k400").glob("train-*.pt"))[0]
    val_video.unlink()
    train_video.unlink()
    dm = Ego4DNLQDataModule(str(root), features=FEATS)
    with pytest.raises(FeatureError, match=r"nlq_val.json: 1 clip\(s\) with feature problems \(2 queries\)"):
        dm.setup("validate")  # evaluation data must be complete: fail before the first batch
    with caplog.at_level("WARNING"):
        ds = dm.dataset("train")
    assert len(ds) == 6 and all(q.video_uid != train_video.stem for q in ds.queries)
    assert "neither" in caplog.text and "skipped" in caplog.text
    for i in range(len(ds)):  # no crash in the middle of an epoch
        ds[i]
    # video splicing draws donors only from clips whose files were checked: never the dropped one
    assert ds.donor_clips() and all(
        ds.annotations.clips[c].video_uid != train_video.stem for c in ds.donor_clips()
    )
    torch.manual_seed(0)
    for _ in range(50):
        ds.random_clip_rows()


def test_row_mismatch_is_found_before_training(tmp_path):
    import shutil

    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    import json

    val = json.loads((root / "v2/annotations/nlq_val.json").read_text())
    clip_uid = val["videos"][0]["clips"][0]["clip_uid"]
    width = Ego4DNLQDataModule(str(root), features=["clip_vitb16"]).video_dim
    # a per-clip file that covers the clip but does not align with the other source's windows
    torch.save(torch.randn(200, width), root / f"v2/clip_vitb16/{clip_uid}.pt")
    dm = Ego4DNLQDataModule(str(root), features=FEATS)
    with pytest.raises(FeatureError, match="disagree on the number of rows"):
        dm.setup("validate")


def test_cli_links_feature_widths_into_the_model(in_tmp):
    from repsuite.cli import run_cli
    from repsuite.nlq import NLQModule

    cli = run_cli(
        [
            "--model",
            "NLQModule",
            "--data",
            "Ego4DNLQDataModule",
            f"--data.root={DATA}",
            "--data.features=[slowfast8x8_r101_k400, clip_vitb16]",
            "--data.temporal_position=true",
        ],
        run=False,
    )
    assert isinstance(cli.model, NLQModule)
    assert cli.model.hparams.video_dim == 26 and cli.model.hparams.text_dim == 0
    assert cli.model.hparams.max_video_len == 600 == cli.datamodule.max_video_len  # linked, typed once
    assert cli.model.model is not None  # built at construction: the widths came from the files


def test_str_does_not_build_datasets():
    """jsonargparse calls str() on the DataModule while linking arguments, before prepare_data has run."""
    dm = Ego4DNLQDataModule(DATA, features=FEATS)
    assert "Ego4DNLQDataModule" in str(dm) and dm.datasets == {}


def test_train_splits_merge_train_and_val_for_a_test_server_entry(in_tmp):
    one = Ego4DNLQDataModule(DATA, features=FEATS).dataset("train")
    val = Ego4DNLQDataModule(DATA, features=FEATS).dataset("val")
    dm = Ego4DNLQDataModule(DATA, features=FEATS, train_splits=["train", "val"])
    with pytest.warns(UserWarning, match="validation figures are not held out"):
        dm.setup("fit")
    merged = dm.dataset("train")
    assert [q.key for q in merged.queries] == [q.key for q in one.queries] + [q.key for q in val.queries]
    assert set(merged.donor_clips()) == set(one.donor_clips()) | set(val.donor_clips())
    from repsuite.nlq.annotations import NLQAnnotationError, merge_annotations

    with pytest.raises(
        NLQAnnotationError, match=r"nlq_train\.json: clip .* is also in an earlier training file"
    ):
        merge_annotations([one.annotations, one.annotations])
    from repsuite.cli import run_cli

    cli = run_cli(
        ["fit", "--config", str(ROOT / "configs/nlq/demo.yaml"), f"--data.root={DATA}",
         "--data.train_splits=[train, val]", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0",
         "--trainer.enable_progress_bar=false", "--trainer.logger=false"]
    )  # fmt: skip
    assert len(cli.datamodule.dataset("train")) == len(one) + len(val)
    assert cli.trainer.state.finished


class _NotFeatures:  # pickled by full pickle: a weights_only load refuses to run its code
    pass


def _corrupt(original: torch.Tensor, quirk: str, path):
    import pickle

    rows, width = original.shape
    if quirk == "random bytes":
        path.write_bytes(bytes(range(256)) * 4)
    elif quirk == "full pickle":
        path.write_bytes(pickle.dumps(_NotFeatures()))
    else:
        value = {
            "shorter than its clip": original[: rows // 3],
            "3-d": original[None],
            "wrong width": torch.randn(rows, width + 3),
            "not a tensor": {"features": original},
            "integer rows": original.long(),
        }[quirk]
        torch.save(value, path)


FEATURE_QUIRKS = {
    "shorter than its clip": "the feature file is shorter than the clip",
    "3-d": r"expected a 2-d \(rows, dim\) tensor",
    "wrong width": "every file of a source must have the same width",
    "not a tensor": "expected a tensor, got dict",
    "integer rows": "expected floating-point features",
    "random bytes": "cannot be read as a torch tensor file",
    "full pickle": "cannot be read as a torch tensor file",
}


@pytest.mark.parametrize("quirk", list(FEATURE_QUIRKS))
def test_a_bad_feature_file_fails_evaluation_at_once_and_is_skipped_and_counted_in_training(
    quirk, tmp_path, caplog
):
    import shutil

    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    folder = root / "v2/slowfast8x8_r101_k400"
    for split in ("val", "train"):
        path = sorted(folder.glob(f"{split}-*.pt"))[0]
        _corrupt(torch.load(path, weights_only=True), quirk, path)
    dm = Ego4DNLQDataModule(str(root), features=FEATS)
    with pytest.raises(
        FeatureError, match=rf"{path.name.replace('train', 'val')[:13]}.*{FEATURE_QUIRKS[quirk]}"
    ):
        dm.setup("validate")  # names the file and says what was expected, before the first batch
    with caplog.at_level("WARNING"):
        train = dm.dataset("train")
    assert f"{path.name}" in caplog.text and "skipped" in caplog.text
    assert len(train) == 6 and all(q.video_uid != path.stem for q in train.queries)


def test_nan_feature_rows_are_an_error_naming_the_file_and_row(tmp_path):
    import shutil

    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    path = sorted((root / "v2/slowfast8x8_r101_k400").glob("val-*.pt"))[0]
    feats = torch.load(path, weights_only=True)
    feats[40:43] = float("nan")
    torch.save(feats, path)
    ds = Ego4DNLQDataModule(str(root), features=FEATS).dataset("val")  # headers are fine: setup passes
    with pytest.raises(FeatureError, match=rf"{path.name}: row 40 holds NaN or infinite values"):
        for i in range(len(ds)):
            ds[i]  # the clip's first read names the file and the first bad row (the clip covers rows 28-94)
