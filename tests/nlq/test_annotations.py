import json
import logging

import pytest

from repsuite.nlq.annotations import (
    NLQAnnotationError,
    load_nlq_annotations,
    normalize_question,
    parse_nlq_annotations,
)


def _v2():
    return {
        "version": "2.0",
        "date": "230105",
        "description": "NLQ Annotations (val)",
        "metadata": "s3://ego4d/ego4d.json",
        "videos": [
            {
                "video_uid": "vid0",
                "split": "val",
                "clips": [
                    {
                        "clip_uid": "c0",
                        "video_start_sec": -4e-7,
                        "video_end_sec": 480.0,
                        "clip_start_sec": 0,
                        "clip_end_sec": 480.0,
                        "annotations": [
                            {
                                "annotation_uid": "a0",
                                "request_uid": "r0",
                                "language_queries": [
                                    {
                                        "clip_start_sec": 10.0,
                                        "clip_end_sec": 14.5,
                                        "query": " Where did I put the knife? ",
                                        "template": "Objects: Where is object X?",
                                        "answer": "Answer (Optional):drawer",
                                    },
                                    {
                                        "clip_start_sec": 20.0,
                                        "clip_end_sec": 20.0,
                                        "query": "what did i open?",
                                        "template": None,
                                    },
                                    {"clip_start_sec": 30.0, "clip_end_sec": 480.4, "query": None},
                                    {"clip_start_sec": 40.0, "clip_end_sec": 41.0},
                                ],
                            },
                        ],
                    },
                ],
            },
        ],
    }


def _test_file():
    return {
        "version": "1",
        "manifest": "s3://ego4d/manifest.csv",
        "videos": [
            {
                "video_uid": "vid9",
                "clips": [
                    {
                        "clip_uid": "c9",
                        "video_start_sec": 100.0,
                        "video_end_sec": 580.0,
                        "annotations": [
                            {
                                "annotation_uid": "a9",
                                "language_queries": [{"query": "who did i talk to?"}, {"query": ""}],
                            },
                        ],
                    },
                ],
            }
        ],
    }


def test_v2_fields_and_raw_query_idx():
    ann = parse_nlq_annotations(_v2(), source="nlq_val.json")
    assert ann.version == "2.0" and ann.num_raw_queries == 4 and len(ann.queries) == 4
    q0, q1, q2, q3 = ann.queries
    assert q0.key == ("c0", "a0", 0) and q0.request_uid == "r0" and q0.answer == "Answer (Optional):drawer"
    assert (q0.gt_start, q0.gt_end) == (10.0, 14.5) and q0.template.startswith("Objects")
    assert q1.is_zero_length and q1.template is None
    assert q2.query is None and not q2.has_text
    assert q3.query is None and q3.template is None and q3.answer is None
    assert ann.clips["c0"].video_start_sec == pytest.approx(-4e-7)
    assert ann.notes == {"GT ends past the clip end": 1, "zero-length windows": 1, "queries without text": 2}
    assert ann.has_ground_truth


def test_filters_keep_raw_indices_and_count_drops(caplog):
    with caplog.at_level(logging.INFO, logger="repsuite.nlq.annotations"):
        ann = parse_nlq_annotations(
            _v2(), source="nlq_train.json", drop_zero_length=True, drop_empty_query=True
        )
    assert [q.query_idx for q in ann.queries] == [0]
    assert ann.dropped["zero-length window"] == 1 and ann.dropped["no query text"] == 2
    assert "nlq_train.json" in caplog.text and "1/4 queries kept" in caplog.text


def test_v1_test_file_has_no_ground_truth():
    ann = parse_nlq_annotations(_test_file())
    assert ann.version == "1" and not ann.has_ground_truth
    assert [q.query for q in ann.queries] == ["who did i talk to?", ""]
    assert ann.clips["c9"].duration == 480.0


def test_invalid_windows_are_counted_and_dropped():
    data = _v2()
    lqs = data["videos"][0]["clips"][0]["annotations"][0]["language_queries"]
    lqs.append({"clip_start_sec": 50.0, "clip_end_sec": 40.0, "query": "reversed?"})
    lqs.append({"clip_start_sec": 900.0, "clip_end_sec": 901.0, "query": "outside?"})
    ann = parse_nlq_annotations(data)
    assert ann.dropped["reversed GT window"] == 1 and ann.dropped["GT starts outside the clip"] == 1
    assert [q.query_idx for q in ann.queries] == [0, 1, 2, 3]
    assert "dropped: 1 GT starts outside the clip, 1 reversed GT window" in ann.summary()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("videos"), r"nlq_val.json: missing field 'videos'"),
        (
            lambda d: d["videos"][0]["clips"][0].pop("clip_uid"),
            r"videos\[0\].clips\[0\]: missing field 'clip_uid'",
        ),
        (
            lambda d: d["videos"][0]["clips"][0].update(video_end_sec="x"),
            r"clips\[0\].video_end_sec: expected int/float",
        ),
        (lambda d: d["videos"][0]["clips"][0].update(video_end_sec=-1.0), "must be after video_start_sec"),
        (
            lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0].update(
                clip_end_sec=None
            ),
            r"language_queries\[0\].clip_end_sec: expected int/float, got None",
        ),
        (
            lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0].update(query=3),
            r"language_queries\[0\].query: expected a string or null",
        ),
    ],
)
def test_schema_errors_name_file_and_path(mutate, match):
    data = _v2()
    mutate(data)
    with pytest.raises(NLQAnnotationError, match=match):
        parse_nlq_annotations(data, source="nlq_val.json")


def test_load_from_disk(tmp_path):
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(_v2()))
    assert len(load_nlq_annotations(path).queries) == 4
    with pytest.raises(NLQAnnotationError, match="no such annotation file"):
        load_nlq_annotations(tmp_path / "missing.json")
    path.write_text("{")
    with pytest.raises(NLQAnnotationError, match="not valid JSON"):
        load_nlq_annotations(path)


def test_normalize_question():
    assert normalize_question(" Where did I put the Knife? ") == "where did i put the knife?"
    assert normalize_question("what did i open") == "what did i open?"
