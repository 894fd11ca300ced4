"""`repsuite nlq submit` and `repsuite nlq ensemble`."""

import json
import shutil

import pytest
import torch

from repsuite.checkpoints import CheckpointError
from repsuite.cli import main, run_cli
from repsuite.nlq.evaluation import evaluate_nlq, load_json, validate_submission
from tests.conftest import ROOT

DEMO = str(ROOT / "configs/nlq/demo.yaml")
DATA = ROOT / "tests/data/ego4d_nlq"


def test_submit_val_writes_valid_submission_and_prints_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "pred.json"
    assert (
        main(["nlq", "submit", str(checkpoint), "--split", "val", "-o", str(out), "--accelerator", "cpu"])
        == 0
    )
    text = capsys.readouterr().out
    assert "Evaluated: 4 / 4 instances" in text and "Rank@1 mIoU@0.3" in text
    sub = json.loads(out.read_text())
    gt = load_json(DATA / "v2/annotations/nlq_val.json")
    validate_submission(sub, gt, max_windows=5, require_ordered=True)
    assert all("scores" in e for e in sub["results"])


def test_submit_test_split_with_root_override(checkpoint, tmp_path, capsys):
    other = tmp_path / "moved_ego4d"
    shutil.copytree(DATA, other)
    out = tmp_path / "test_pred.json"
    assert (
        main(
            [
                "nlq",
                "submit",
                str(checkpoint),
                "--split",
                "test",
                "-o",
                str(out),
                "--accelerator",
                "cpu",
                f"--data.root={other}",
            ]
        )
        == 0
    )
    sub = json.loads(out.read_text())
    gt = load_json(DATA / "v2/annotations/nlq_test_unannotated.json")
    validate_submission(sub, gt)
    assert len(sub["results"]) == 2


def test_predict_with_submission_writer_equals_submit(checkpoint, tmp_path, in_tmp):
    """`repsuite predict` with the writer callback is the documented route; `nlq submit` only wraps it."""
    via_submit, via_predict = tmp_path / "submit.json", tmp_path / "predict.json"
    assert main(["nlq", "submit", str(checkpoint), "--split", "val", "-o", str(via_submit)]) == 0
    args = ["predict", "--config", DEMO, f"--data.root={DATA}", "--data.predict_split=val"]
    args += [f"--ckpt_path={checkpoint}", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.callbacks+=SubmissionWriter", f"--trainer.callbacks.output={via_predict}"]
    run_cli(args)
    assert via_predict.read_bytes() == via_submit.read_bytes()


def _predict(checkpoint, out, *extra):
    args = ["predict", "--config", DEMO, f"--data.root={DATA}", "--data.predict_split=val", *extra]
    args += [f"--ckpt_path={checkpoint}", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.callbacks+=SubmissionWriter", f"--trainer.callbacks.output={out}"]
    run_cli(args)
    return json.loads(out.read_text())["results"]


def test_model_options_typed_with_ckpt_path_override_the_checkpoint(checkpoint, tmp_path, in_tmp):
    """Lightning replaces the model section with the checkpoint's hyper-parameters; options typed on the
    command line still apply (the decoder's, here), the architecture still comes from the checkpoint."""
    plain = _predict(checkpoint, tmp_path / "plain.json", "--model.nms_iou=null")
    distinct = _predict(checkpoint, tmp_path / "nms.json")
    overlap = lambda e: max(_iou(a, b) for i, a in enumerate(e["predicted_times"])  # noqa: E731
                            for b in e["predicted_times"][i + 1 :])  # fmt: skip
    assert max(map(overlap, plain)) > 0.5 >= max(map(overlap, distinct))
    widened = ["--model.hidden=32", "--trainer.callbacks+=SubmissionWriter"]
    with pytest.raises(
        CheckpointError, match="hidden: checkpoint 64, here 32"
    ):  # typed architecture: refused
        run_cli(["predict", "--config", DEMO, f"--data.root={DATA}", f"--ckpt_path={checkpoint}", *widened,
                 f"--trainer.callbacks.output={tmp_path / 'x.json'}", "--trainer.logger=false"])  # fmt: skip


def _largest_score_change(a: list[dict], b: list[dict]) -> float:
    assert [e["annotation_uid"] for e in a] == [e["annotation_uid"] for e in b]
    pairs = [
        (x, y) for ea, eb in zip(a, b, strict=True) for x, y in zip(ea["scores"], eb["scores"], strict=True)
    ]
    return max(abs(x - y) / abs(y) for x, y in pairs)


def test_a_submission_never_depends_on_the_batch_size(checkpoint, tmp_path, in_tmp):
    """The val clips differ in length (67 and 60 bins): split per clip (the default), a clip alone or padded
    next to the other gets the same windows and the same scores (to float32 rounding: BLAS sums in another
    order for another batch shape)."""
    alone = _predict(checkpoint, tmp_path / "b1.json", "--data.eval_batch_size=1")
    together = _predict(checkpoint, tmp_path / "b16.json", "--data.eval_batch_size=16")
    assert [e["predicted_times"] for e in alone] == [e["predicted_times"] for e in together]
    assert _largest_score_change(alone, together) < 1e-5


@pytest.mark.parametrize("segment_by", ["clip", "batch"])
def test_the_release_split_moves_a_short_clips_answer_with_its_batch(checkpoint, segment_by):
    """``segment_by=batch`` (the release) cuts the 60-bin clip by its 67-bin neighbour's length."""
    from lightning.pytorch import Trainer

    from repsuite.nlq import Ego4DNLQDataModule, NLQModule

    module = NLQModule.load_from_checkpoint(checkpoint, segment_by=segment_by, weights_only=True)
    runs = []
    for size in (1, 16):
        dm = Ego4DNLQDataModule(
            root=str(DATA), features=["slowfast8x8_r101_k400", "clip_vitb16"], text="tokens",
            max_video_len=256, predict_split="val", eval_batch_size=size,
        )  # fmt: skip
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        runs.append([e for batch in trainer.predict(module, dm) for e in batch])
    change = _largest_score_change(*runs)
    assert change < 1e-5 if segment_by == "clip" else change > 1e-3


def _iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


@pytest.mark.parametrize("nms_iou", [0.5, None])
def test_top_five_are_distinct_answers_unless_asked_for_plain_pooling(checkpoint, nms_iou):
    from lightning.pytorch import Trainer

    from repsuite.nlq import Ego4DNLQDataModule, NLQModule

    module = NLQModule.load_from_checkpoint(checkpoint, nms_iou=nms_iou, weights_only=True)
    dm = Ego4DNLQDataModule(root=str(DATA), features=["slowfast8x8_r101_k400", "clip_vitb16"], text="tokens",
                            max_video_len=256, predict_split="val")  # fmt: skip
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    entries = [e for batch in trainer.predict(module, dm) for e in batch]
    overlaps = [_iou(a, b) for e in entries for i, a in enumerate(e["predicted_times"])
                for b in e["predicted_times"][i + 1 :]]  # fmt: skip
    assert all(len(e["predicted_times"]) == 5 for e in entries)
    if nms_iou is not None:
        assert max(overlaps) <= nms_iou
    else:  # the release's pooling: the undertrained model's five windows share a start (see the issue)
        assert max(overlaps) > 0.5


def test_submit_and_predict_name_a_bad_feature_file(checkpoint, tmp_path, capsys):
    """The same clear error through `nlq submit` as through fit / validate: the file, what was expected."""
    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    bad = sorted((root / "v2/slowfast8x8_r101_k400").glob("val-*.pt"))[0]
    torch.save(torch.load(bad, weights_only=True)[:5], bad)  # truncated extraction
    args = [
        "nlq",
        "submit",
        str(checkpoint),
        "--split",
        "val",
        "-o",
        str(tmp_path / "p.json"),
        f"--data.root={root}",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert bad.name in err and "the feature file is shorter than the clip" in err
    assert not (tmp_path / "p.json").exists()


def test_submit_rejects_unknown_data_option(checkpoint, tmp_path, capsys):
    code = main(["nlq", "submit", str(checkpoint), "-o", str(tmp_path / "x.json"), "--data.rooot=/x"])
    assert code == 1 and "Option 'rooot' is not accepted" in capsys.readouterr().err


def _sub(entries):
    return {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": entries}


def test_ensemble_merges_by_score(tmp_path, capsys):
    a = _sub(
        [
            {
                "clip_uid": "c",
                "annotation_uid": "a",
                "query_idx": 0,
                "predicted_times": [[0, 1], [2, 3]],
                "scores": [0.9, 0.2],
            }
        ]
    )
    b = _sub(
        [
            {
                "clip_uid": "c",
                "annotation_uid": "a",
                "query_idx": 0,
                "predicted_times": [[4, 5], [0, 1]],
                "scores": [0.5, 0.4],
            }
        ]
    )
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "ens.json"
    ensemble = ["nlq", "ensemble", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out)]
    assert main([*ensemble, "--top-k", "3"]) == 0
    merged = json.loads(out.read_text())["results"][0]
    assert merged["predicted_times"] == [[0, 1], [4, 5], [0, 1]] and merged["scores"] == [0.9, 0.5, 0.4]
    assert main([*ensemble, "--deduplicate"]) == 0
    merged = json.loads(out.read_text())["results"][0]
    assert merged["predicted_times"] == [[0, 1], [4, 5], [2, 3]]
    gt = {
        "videos": [
            {
                "clips": [
                    {
                        "clip_uid": "c",
                        "annotations": [
                            {
                                "annotation_uid": "a",
                                "language_queries": [{"clip_start_sec": 4.0, "clip_end_sec": 5.0}],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    assert evaluate_nlq(json.loads(out.read_text()), gt, top_k=(1, 5)).recall[(0.5, 5)] == 1.0


def test_ensemble_needs_scores(tmp_path, capsys):
    bare = _sub([{"clip_uid": "c", "annotation_uid": "a", "query_idx": 0, "predicted_times": [[0, 1]]}])
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert main(["nlq", "ensemble", str(tmp_path / "bare.json"), "-o", str(tmp_path / "o.json")]) == 1
    assert "results[0] has no `scores` list" in capsys.readouterr().err
