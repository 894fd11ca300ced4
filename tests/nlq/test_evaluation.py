"""Official NLQ scoring semantics on hand-computed cases (shared/reference/nlq.md §2)."""

import json
import math

import pytest

from repsuite.cli import main
from repsuite.nlq import SubmissionError, evaluate_nlq, format_table, temporal_iou, validate_submission


def _gt():
    # two clips; clip B's annotation has a query without text and a zero-length window (v1 style)
    return {
        "version": "1",
        "videos": [
            {
                "video_uid": "v1",
                "clips": [
                    {
                        "clip_uid": "A",
                        "annotations": [
                            {
                                "annotation_uid": "a1",
                                "language_queries": [
                                    {
                                        "clip_start_sec": 2.0,
                                        "clip_end_sec": 6.0,
                                        "query": "where is the cup?",
                                    },
                                    {
                                        "clip_start_sec": 0.0,
                                        "clip_end_sec": 10.0,
                                        "query": "what did i open?",
                                    },
                                ],
                            },
                        ],
                    },
                    {
                        "clip_uid": "B",
                        "annotations": [
                            {
                                "annotation_uid": "b1",
                                "language_queries": [
                                    {
                                        "clip_start_sec": 3.0,
                                        "clip_end_sec": 3.0,
                                        "query": "who did i talk to?",
                                    },
                                    {"clip_start_sec": 1.0, "clip_end_sec": 2.0},
                                ],
                            },
                        ],
                    },
                ],
            },
        ],
    }


def _sub(results):
    return {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}


def _entry(clip, ann, idx, times):
    return {"clip_uid": clip, "annotation_uid": ann, "query_idx": idx, "predicted_times": times}


@pytest.mark.parametrize(
    ("window", "gt", "expected"),
    [
        ((3, 5), (2, 6), 0.5),
        ((0, 1), (2, 6), 0.0),  # disjoint
        ((4, 4), (2, 6), 0.0),  # zero-length prediction
        ((5, 3), (2, 6), 0.0),  # reversed prediction
        ((0, 3), (0, 10), 0.3),
        ((1, 8), (2, 6), 4 / 7),
        ((2, 6), (2, 6), 1.0),
    ],
)
def test_temporal_iou(window, gt, expected):
    assert temporal_iou(window, gt) == pytest.approx(expected)


def test_point_on_point_is_nan_like_numpy():
    assert math.isnan(temporal_iou((3, 3), (3, 3)))


def test_hand_computed_recalls_and_miou():
    preds = [
        _entry("A", "a1", 0, [[3, 5], [2, 6]]),  # IoU 0.5 then 1.0
        _entry("A", "a1", 1, [[0, 3], [20, 30], [0, 4]]),  # IoU 0.3 (not > 0.3), 0, 0.4
        _entry("B", "b1", 0, [[2, 4]]),  # zero-length GT: IoU 0
    ]
    r = evaluate_nlq(_sub(preds), _gt(), thresholds=(0.3, 0.5), top_k=(1, 3, 5))
    assert r.num_evaluated == 3 and r.num_gt_queries == 4
    assert r.recall[(0.3, 1)] == pytest.approx(1 / 3)  # only entry 0 (0.5 > 0.3); 0.3 is not > 0.3
    assert r.recall[(0.5, 1)] == pytest.approx(0.0)  # 0.5 is not > 0.5
    assert r.recall[(0.3, 3)] == pytest.approx(2 / 3)  # entry 1 hits with its third window (0.4)
    assert r.recall[(0.5, 3)] == pytest.approx(1 / 3)  # entry 0's second window (1.0)
    assert r.recall[(0.5, 5)] == pytest.approx(1 / 3)
    assert r.mean_iou == pytest.approx((0.5 + 0.3 + 0.0) / 3)
    assert r.mean_r1 == pytest.approx((1 / 3 + 0.0) / 2)


def test_submitted_order_is_the_ranking_and_extra_windows_are_ignored():
    preds = [_entry("A", "a1", 0, [[0, 1], [0, 1], [2, 6], [9, 9], [9, 9], [2, 6]])]
    r = evaluate_nlq(preds, _gt(), thresholds=(0.5,), top_k=(1, 2, 3, 5))
    assert [r.recall[(0.5, k)] for k in (1, 2, 3, 5)] == [0.0, 0.0, 1.0, 1.0]
    assert r.mean_iou == 0.0


def test_duplicates_count_twice_officially_once_in_strict(recwarn):
    preds = [_entry("A", "a1", 0, [[2, 6]]), _entry("A", "a1", 0, [[2, 6]]), _entry("A", "a1", 1, [[50, 60]])]
    r = evaluate_nlq(_sub(preds), _gt(), top_k=(1,))
    assert r.num_evaluated == 3 and r.num_duplicates == 1
    assert r.recall[(0.3, 1)] == pytest.approx(2 / 3)
    s = evaluate_nlq(_sub(preds), _gt(), top_k=(1,), strict=True)
    # strict: 4 GT queries in the denominator, the duplicate scored once, 2 missing queries are misses
    assert s.num_missing == 2 and s.recall[(0.3, 1)] == pytest.approx(1 / 4)
    assert s.mean_iou == pytest.approx(1 / 4)
    assert any("duplicate" in str(w.message) for w in recwarn)


def test_nan_iou_propagates_to_miou_like_the_official_script():
    preds = [_entry("B", "b1", 0, [[3, 3]])]
    r = evaluate_nlq(preds, _gt())
    assert r.recall[(0.3, 1)] == 0.0
    assert math.isnan(r.mean_iou)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (
            _entry("A", "a1", 0, []),
            r"results\[0\] \(clip_uid='A'.*`predicted_times` must be a non-empty list",
        ),
        (_entry("A", "a1", 0, [2, 6]), r"`predicted_times\[0\]` must be a \[start_sec, end_sec\] pair"),
        (_entry("A", "a1", 0, [[2, "6"]]), r"`predicted_times\[0\]`"),
        (_entry("A", "a1", 0, [[2, float("nan")]]), "finite"),
        (_entry("Z", "a1", 0, [[2, 6]]), "no such clip/annotation"),
        (_entry("A", "a1", 2, [[2, 6]]), "out of range; that annotation has 2 language queries"),
        (_entry("A", "a1", -1, [[2, 6]]), "non-negative integer"),
        (_entry("A", "a1", True, [[2, 6]]), "non-negative integer"),
        ({"clip_uid": "A", "annotation_uid": "a1", "predicted_times": [[1, 2]]}, "`query_idx`"),
    ],
)
def test_malformed_entries_name_the_entry(entry, match):
    with pytest.raises(SubmissionError, match=match):
        evaluate_nlq(_sub([_entry("A", "a1", 1, [[0, 1]]), entry][1:]), _gt(), source="pred.json")


@pytest.mark.parametrize(
    ("sub", "match"),
    [
        ({"version": "2.0", "challenge": "ego4d_nlq_challenge", "results": []}, "`version` must be '1.0'"),
        ({"version": "1.0", "challenge": "nlq", "results": []}, "`challenge` must be 'ego4d_nlq_challenge'"),
        ({"version": "1.0", "challenge": "ego4d_nlq_challenge"}, "`results` must be a list"),
        ([], "expected a JSON object"),
    ],
)
def test_malformed_submission_header(sub, match):
    with pytest.raises(SubmissionError, match=match):
        validate_submission(sub, source="pred.json")


def test_writer_checks_are_stricter_than_the_scorer():
    sub = _sub([_entry("A", "a1", 0, [[5, 3]] * 6)])
    validate_submission(sub, _gt())  # the official scorer accepts both
    with pytest.raises(SubmissionError, match="6 windows, at most 5"):
        validate_submission(sub, _gt(), max_windows=5)
    with pytest.raises(SubmissionError, match=r"starts after it ends \(5 > 3\)"):
        validate_submission(sub, _gt(), require_ordered=True)


def test_table_layout():
    r = evaluate_nlq([_entry("A", "a1", 0, [[3, 5]])], _gt())
    table = format_table(r)
    assert "Rank@1 mIoU@0.3" in table and "Rank@5 mIoU@0.5" in table and "mean R@1" in table
    assert "100.00" in table and "50.00" in table


def test_cli_eval(tmp_path, capsys):
    gt, pred, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "scores.json"
    gt.write_text(json.dumps(_gt()))
    pred.write_text(json.dumps(_sub([_entry("A", "a1", 0, [[3, 5]]), _entry("A", "a1", 1, [[0, 9]])])))
    assert main(["nlq", "eval", str(gt), str(pred), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Evaluated: 2 / 4 instances" in text and "Rank@1 mIoU@0.3" in text
    scores = json.loads(out.read_text())
    assert scores["R@1_IoU0.3"] == pytest.approx(100.0) and scores["R@1_IoU0.5"] == pytest.approx(50.0)
    assert main(["nlq", "eval", str(gt), str(pred), "--strict"]) == 0
    assert "Missing: 2 ground-truth queries" in capsys.readouterr().out


def test_cli_eval_malformed_exits_nonzero_naming_entry(tmp_path, capsys):
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps(_gt()))
    pred.write_text(json.dumps(_sub([_entry("A", "a1", 0, [[3, 5]]), _entry("B", "b1", 0, [])])))
    assert main(["nlq", "eval", str(gt), str(pred)]) == 1
    err = capsys.readouterr().err
    assert "pred.json: results[1] (clip_uid='B', annotation_uid='b1', query_idx=0)" in err
    pred.write_text("{not json")
    assert main(["nlq", "eval", str(gt), str(pred)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["nlq", "eval", str(gt), str(tmp_path / "absent.json")]) == 1
    assert "absent.json: no such file" in capsys.readouterr().err


def test_random_window_baseline_keeps_lengths(tmp_path, capsys):
    gt = {
        "videos": [
            {
                "clips": [
                    {
                        "clip_uid": "A",
                        "video_start_sec": 10.0,
                        "video_end_sec": 110.0,
                        "annotations": [
                            {
                                "annotation_uid": "a1",
                                "language_queries": [{"clip_start_sec": 2.0, "clip_end_sec": 6.0}],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    entries = [_entry("A", "a1", 0, [[2.0, 6.0], [50.0, 80.0]])]
    from repsuite.nlq.evaluation import random_window_baseline

    moved = random_window_baseline(entries, gt, seed=1)[0]["predicted_times"]
    assert [round(e - s, 6) for s, e in moved] == [4.0, 30.0]
    assert all(0 <= s and e <= 100.0 for s, e in moved)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text(json.dumps(_sub(entries)))
    assert (
        main(["nlq", "eval", str(tmp_path / "gt.json"), str(tmp_path / "p.json"), "--random-baseline"]) == 0
    )
    assert "Random-window baseline" in capsys.readouterr().out
