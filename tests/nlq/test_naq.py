"""Narrations as queries: narration.json in the Ego4D layout → NLQ-format queries (EgoClip windows)."""

import json

import pytest
import torch

from repsuite.cli import main
from repsuite.nlq.annotations import load_nlq_annotations
from repsuite.nlq.naq import (
    NaQError,
    build_naq,
    clean_narration,
    egoclip_windows,
    merge_annotations,
    read_narrations,
)
from repsuite.nlq.synthetic import SyntheticSpec, write_synthetic_ego4d


def _narr(t, text, uid="n"):
    return {"timestamp_sec": t, "timestamp_frame": int(t * 30), "narration_text": text, "annotation_uid": uid}


def _download(tmp_path, narrations, clips):
    """ROOT/v2/annotations with nlq_train.json holding ``clips`` {video: [(clip_uid, start, end)]}."""
    ann = tmp_path / "v2" / "annotations"
    ann.mkdir(parents=True)
    videos = [
        {"video_uid": v, "split": "train", "clips": [
            {"clip_uid": c, "video_start_sec": s, "video_end_sec": e, "annotations": []} for c, s, e in cs]}
        for v, cs in clips.items()
    ]  # fmt: skip
    (ann / "nlq_train.json").write_text(json.dumps({"version": "2.0", "videos": videos}))
    (ann / "narration.json").write_text(json.dumps(narrations))
    return tmp_path


def test_clean_narration():
    assert clean_narration("#C C picks up the knife") == "the camera wearer picks up the knife"
    assert clean_narration("#O man X hands #C C a cup.") == "someone man X hands the camera wearer a cup"
    assert clean_narration("#C C picks #unsure") is None and clean_narration("  #summary ") is None


def test_egoclip_rule_scales_windows_by_each_videos_narration_density(tmp_path):
    narrations = {
        "dense": {"narration_pass_1": {"narrations": [_narr(t, "#C C a") for t in (10, 12, 14, 16)]}},
        "sparse": {"narration_pass_1": {"narrations": [_narr(t, "#C C b") for t in (10, 16, 22)]}},
        "single": {"narration_pass_1": {"narrations": [_narr(5, "#C C c")]}},  # no gap: the mean window
    }
    path = tmp_path / "narration.json"
    path.write_text(json.dumps(narrations))
    windows = egoclip_windows(read_narrations(path))
    # beta: 2 s and 6 s, alpha = 4 s: windows of 0.5 s and 1.5 s, centred on the narrations; 1 s when alone
    assert windows["dense"][0][:2] == pytest.approx((9.75, 10.25))
    assert windows["sparse"][1][:2] == pytest.approx((15.25, 16.75))
    assert [(s, e) for s, e, _ in windows["single"]] == [pytest.approx((4.5, 5.5))]


def test_build_keeps_narrations_inside_clips_and_counts_what_it_drops(tmp_path):
    narrations = {
        "v": {"narration_pass_1": {"narrations": [  # one pass: narration_pass_2 missing, as in some videos
            _narr(3.0, "#C C walks"),  # before the clip
            _narr(10.5, "#C C opens the door"),  # window [10.0, 11.0]: starts exactly at the clip start
            _narr(10.45, "#C C looks"),  # window [9.95, 10.95]: crosses the clip border
            _narr(11.0, "#C C picks #unsure"),
            _narr(11.5, ""),
            _narr(12.0, "#C C holds the cup"),
        ]}},
        # its mean gap (1.8 s) equals v's, so alpha = beta and every window is 1 s long
        "elsewhere": {"narration_pass_1": {"narrations": [_narr(1.0, "#C C x"), _narr(2.8, "#C C y")]}},
    }  # fmt: skip
    root = _download(tmp_path, narrations, {"v": [("clip-a", 10.0, 20.0)]})
    data, counts = build_naq(root)
    (clip,) = data["videos"][0]["clips"]
    queries = clip["annotations"][0]["language_queries"]
    assert [q["query"] for q in queries] == [
        "the camera wearer opens the door",
        "the camera wearer holds the cup",
    ]
    assert queries[0]["clip_start_sec"] == pytest.approx(0.0) and queries[0]["video_start_sec"] == 10.0
    assert counts["kept"] == 2 and counts["videos"] == 1 and counts["clips"] == 1
    assert counts["dropped: unsure or empty text"] == 2
    assert counts["dropped: not inside an episodic-memory clip"] == 2  # before the clip, across its border
    out = tmp_path / "naq.json"
    out.write_text(json.dumps(data))
    assert len(load_nlq_annotations(out).queries) == 2  # the NLQ reader takes it as is


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read as JSON"),
        (json.dumps({"v": {"narration_pass_1": {"narrations": "x"}}}),
         r"\['v'\]\['narration_pass_1'\]\.narrations"),
        (json.dumps({"v": {"narration_pass_2": {"narrations": [{"timestamp_sec": "soon"}]}}}),
         r"narrations\[0\]\.timestamp_sec: expected seconds >= 0, got 'soon'"),
        (json.dumps({"v": {"narration_pass_1": {"narrations": [_narr(1.0, 7)]}}}),
         r"narration_text: expected a string"),
    ],
)  # fmt: skip
def test_malformed_narration_file_names_the_file_and_the_field(tmp_path, content, message):
    path = tmp_path / "narration.json"
    path.write_text(content)
    with pytest.raises(NaQError, match=message) as err:
        read_narrations(path)
    assert str(path) in str(err.value)


def test_merge_keeps_both_annotation_lists_of_a_shared_clip_and_refuses_mismatched_times():
    clip = {"clip_uid": "c", "video_start_sec": 1.0, "video_end_sec": 9.0}
    nlq = {"version": "2.0", "videos": [{"video_uid": "v", "clips": [clip | {"annotations": [{"a": 1}]}]}]}
    other = clip | {"clip_uid": "d", "annotations": [{"c": 3}]}
    naq = {"videos": [{"video_uid": "v", "clips": [clip | {"annotations": [{"b": 2}]}]},
                      {"video_uid": "w", "clips": [other]}]}  # fmt: skip
    merged = merge_annotations(naq, nlq)
    assert merged["version"] == "2.0" and [v["video_uid"] for v in merged["videos"]] == ["v", "w"]
    assert merged["videos"][0]["clips"][0]["annotations"] == [{"a": 1}, {"b": 2}]
    naq["videos"][0]["clips"][0]["video_end_sec"] = 9.5
    with pytest.raises(NaQError, match="video_end_sec"):
        merge_annotations(naq, nlq)


def test_egoclip_csv_windows_are_used_when_given(tmp_path):
    root = _download(tmp_path, {}, {"v": [("clip-a", 10.0, 20.0)]})
    csv = tmp_path / "egoclip.csv"
    rows = [
        "video_uid\tclip_start\tclip_end\tclip_text",
        "v\t11.0\t13.5\t#C C cuts the onion",
        "v\t19\t21\tx",
    ]
    csv.write_text("\n".join(rows) + "\n")
    data, counts = build_naq(root, egoclip=csv)
    (q,) = data["videos"][0]["clips"][0]["annotations"][0]["language_queries"]
    assert (q["clip_start_sec"], q["clip_end_sec"], q["query"]) == (
        1.0,
        3.5,
        "the camera wearer cuts the onion",
    )
    assert counts["dropped: not inside an episodic-memory clip"] == 1


def test_synthetic_download_has_narrations_and_the_naq_command_builds_a_merged_file(tmp_path, capsys):
    spec = SyntheticSpec(
        num_videos={"train": 3, "val": 1, "test": 1},
        clips_per_video=1,
        clip_seconds=(30, 40),
        sources={"slowfast8x8_r101_k400": 8},
        text_source=None,
    )
    write_synthetic_ego4d(tmp_path, spec)
    narr = read_narrations(tmp_path / "v2/annotations/narration.json")
    assert len(narr) == 5 and all(len(n) > 5 for n in narr.values())
    out = tmp_path / "train_naq.json"
    nlq = tmp_path / "v2/annotations/nlq_train.json"
    assert main(["nlq", "naq", str(tmp_path), "-o", str(out), "--merge-with", str(nlq)]) == 0
    printed = capsys.readouterr().out
    merged = load_nlq_annotations(out).queries
    n_nlq = len(load_nlq_annotations(nlq).queries)
    kept = int(printed.split(" narration queries")[0])
    assert len(merged) == n_nlq + kept and kept > 20 and "dropped: unsure or empty text" in printed
    # the events' narrations use the questions' object words, inside the answer windows of the questions
    objects = {q.query.split()[-1].rstrip("?") for q in load_nlq_annotations(nlq).queries}
    assert any(any(o in q.query for o in objects) for q in merged if q.template is None)


def test_datamodule_trains_on_naq_beside_nlq_and_draws_each_source_by_its_weight(tmp_path):
    from repsuite.nlq import Ego4DNLQDataModule

    spec = SyntheticSpec(num_videos={"train": 3, "val": 1, "test": 1}, clips_per_video=1,
                         clip_seconds=(30, 40), sources={"slowfast8x8_r101_k400": 8},
                         text_source=None)  # fmt: skip
    write_synthetic_ego4d(tmp_path, spec)
    naq = tmp_path / "naq.json"
    assert main(["nlq", "naq", str(tmp_path), "-o", str(naq)]) == 0
    n_naq = len(load_nlq_annotations(naq).queries)
    n_nlq = len(load_nlq_annotations(tmp_path / "v2/annotations/nlq_train.json").queries)

    def data(**kw):
        dm = Ego4DNLQDataModule(str(tmp_path), features=["slowfast8x8_r101_k400"], batch_size=4, **kw)
        dm.setup("fit")
        return dm

    both = data(train_files=[str(naq)])  # NaQ shares the NLQ clips
    assert len(both.dataset("train")) == n_nlq + n_naq
    assert both.train_sources.count(0) == n_nlq and both.train_sources.count(1) == n_naq
    assert both.train_sampler() is None  # no weights: every query once per epoch
    for weights, source in (([1.0, 0.0], 0), ([0.0, 1.0], 1)):
        dm = data(train_files=[str(naq)], train_weights=weights)
        drawn = list(dm.train_sampler())
        assert len(drawn) == n_nlq + n_naq and {dm.train_sources[i] for i in drawn} == {source}
    torch.manual_seed(0)
    dm = data(train_files=[str(naq)], train_weights=[1.0, 1.0])  # equal weights: half the draws are NLQ
    share = sum(dm.train_sources[i] == 0 for i in dm.train_sampler()) / (n_nlq + n_naq)
    assert 0.35 < share < 0.65 and n_nlq / (n_nlq + n_naq) < 0.2
    with pytest.raises(ValueError, match="expected 2 non-negative weights"):
        data(train_files=[str(naq)], train_weights=[1.0])
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        data(train_files=["nowhere.json"])


def test_merging_training_files_that_disagree_on_a_shared_clip_is_refused(tmp_path):
    from repsuite.nlq.annotations import NLQAnnotationError
    from repsuite.nlq.annotations import merge_annotations as merge_parsed

    ann = tmp_path / "v2/annotations"
    clip = {"clip_uid": "c", "video_start_sec": 1.0, "video_end_sec": 30.0}
    q = {
        "clip_start_sec": 1.0,
        "clip_end_sec": 2.0,
        "video_start_sec": 2.0,
        "video_end_sec": 3.0,
        "query": "x?",
    }
    for name, end in (("a.json", 30.0), ("b.json", 31.0)):
        video = {"video_uid": "v", "clips": [clip | {"video_end_sec": end, "annotations": [
            {"annotation_uid": name, "language_queries": [q]}]}]}  # fmt: skip
        ann.mkdir(parents=True, exist_ok=True)
        (ann / name).write_text(json.dumps({"version": "2.0", "videos": [video]}))
    a, b = (load_nlq_annotations(ann / n) for n in ("a.json", "b.json"))
    with pytest.raises(NLQAnnotationError, match="must not share clips"):
        merge_parsed([a, b])
    with pytest.raises(NLQAnnotationError, match=r"clip c spans \[1.0, 31.0\] s"):
        merge_parsed([a, b], shared_clips=True)
    assert len(merge_parsed([a, a], shared_clips=True).queries) == 2


def test_init_from_copies_a_checkpoints_network_and_refuses_another_architecture(checkpoint, tmp_path):
    """NaQ fine-tuning starts from the pre-training's weights: --model.init_from, weights only."""
    import inspect

    from repsuite.checkpoints import CheckpointError
    from repsuite.nlq import NLQModule
    from repsuite.nlq.module import MODEL_CONFIG_KEY

    ckpt = torch.load(checkpoint, weights_only=True)
    names = inspect.signature(NLQModule.__init__).parameters
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k in names}
    dims = {k: ckpt[MODEL_CONFIG_KEY][k] for k in ("video_dim", "text_dim")}
    module = NLQModule(**(hp | dims | {"init_from": str(checkpoint)}))
    module.setup("validate")  # only a fit starts from init_from
    state = module.model.state_dict()
    big = max(state, key=lambda k: state[k].numel())
    assert not torch.equal(state[big], ckpt["state_dict"][f"model.{big}"])  # still its own random init
    module.setup("fit")
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.{key}"]), key
    other = NLQModule(**(hp | dims | {"hidden": hp.get("hidden", 256) // 2, "init_from": str(checkpoint)}))
    with pytest.raises(CheckpointError, match=r"init_from .*NLQModel"):
        other.setup("fit")


def test_a_malformed_episodic_memory_file_names_the_file_and_the_field(tmp_path):
    root = _download(tmp_path, {}, {"v": [("clip-a", 10.0, 20.0)]})
    path = root / "v2/annotations/nlq_train.json"
    data = json.loads(path.read_text())
    del data["videos"][0]["clips"][0]["video_end_sec"]
    path.write_text(json.dumps(data))
    with pytest.raises(
        NaQError, match=r"nlq_train\.json: videos\[0\]\.clips\[0\]: missing field 'video_end_sec'"
    ):
        build_naq(root)
    path.write_text("{broken")
    with pytest.raises(NaQError, match=r"nlq_train\.json: cannot be read as JSON"):
        build_naq(root)
