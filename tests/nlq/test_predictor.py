"""``NLQPredictor``: a checkpoint answering questions, with the numbers ``repsuite nlq submit`` writes."""

import json

import pytest
import torch

from repsuite.cli import main
from repsuite.nlq.annotations import load_nlq_annotations
from repsuite.nlq.predictor import NLQPredictor, PredictorError
from tests.nlq.fixtures import DATA

BASE = DATA / "v2"
SOURCES = ["slowfast8x8_r101_k400", "clip_vitb16"]


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return NLQPredictor.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def submitted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("submit") / "val.json"
    assert (
        main(["nlq", "submit", str(checkpoint), "--split", "val", "-o", str(out), "--accelerator", "cpu"])
        == 0
    )
    return {
        (e["clip_uid"], e["annotation_uid"], e["query_idx"]): e
        for e in json.loads(out.read_text())["results"]
    }


def _by_clip():
    ann = load_nlq_annotations(BASE / "annotations" / "nlq_val.json")
    clips: dict[str, list] = {}
    for q in ann.queries:
        clips.setdefault(q.clip_uid, []).append(q)
    return ann, clips


def test_answers_equal_the_submission_for_every_query(predictor, submitted):
    """Each clip's questions batched in one call, the clip cut from the per-video files by its times."""
    ann, clips = _by_clip()
    compared = 0
    for clip_uid, queries in clips.items():
        clip = ann.clips[clip_uid]
        files = {s: BASE / s / f"{clip.video_uid}.pt" for s in SOURCES}
        answers = predictor.query(
            files, [q.query for q in queries], clip=(clip.video_start_sec, clip.video_end_sec)
        )
        for q, answer in zip(queries, answers, strict=True):
            entry = submitted[q.key]
            assert answer.question == q.query
            assert torch.allclose(
                torch.tensor(answer.windows), torch.tensor(entry["predicted_times"]), atol=1e-6
            )
            assert torch.allclose(
                torch.tensor(answer.scores), torch.tensor(entry["scores"]), rtol=1e-4, atol=1e-7
            )
            compared += 1
    assert compared == len(submitted) and compared >= 3


def test_tensor_inputs_and_one_question(predictor):
    ann, clips = _by_clip()
    clip_uid, queries = next(iter(clips.items()))
    clip = ann.clips[clip_uid]
    span = (clip.video_start_sec, clip.video_end_sec)
    tensors = {s: torch.load(BASE / s / f"{clip.video_uid}.pt", weights_only=True) for s in SOURCES}
    by_file = predictor.query(
        {s: BASE / s / f"{clip.video_uid}.pt" for s in SOURCES}, queries[0].query, clip=span
    )
    by_tensor = predictor.query(tensors, queries[0].query, clip=span)
    joined = predictor.query(torch.cat([tensors[s] for s in SOURCES], dim=1), queries[0].query, clip=span)
    assert by_file == by_tensor == joined  # one question: one answer, not a list
    assert len(by_file.moments) == 5 and by_file.scores == sorted(by_file.scores, reverse=True)
    top3 = predictor.query(tensors, queries[0].query, clip=span, top_k=3)
    assert top3.moments == by_file.moments[:3]  # with NMS the pool is ranked the same, only cut earlier
    assert "question:" in str(by_file) and " s " in str(by_file)


def test_bad_inputs_are_named(predictor, checkpoint, tmp_path):
    ann, clips = _by_clip()
    clip = ann.clips[next(iter(clips))]
    one = BASE / SOURCES[0] / f"{clip.video_uid}.pt"
    with pytest.raises(PredictorError, match=r"2 feature sources .*slowfast8x8_r101_k400"):
        predictor.query(one, "where?")  # a two-source model given one source's file
    with pytest.raises(PredictorError, match=r"missing \['clip_vitb16'\]"):
        predictor.query({SOURCES[0]: one}, "where?")
    with pytest.raises(PredictorError, match=r"expected \(rows, \d+\) features of source 'clip_vitb16'"):
        predictor.query({SOURCES[0]: one, SOURCES[1]: torch.zeros(10, 3)}, "where?")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not a video")
    with pytest.raises(PredictorError, match="'slowfast8x8_r101_k400' cannot be made from a video file"):
        predictor.query(video, "where?")  # the test download's sources were not made by extract-video
    with pytest.raises(PredictorError, match="not found"):
        predictor.query(tmp_path / "missing.mp4", "where?")
    with pytest.raises(PredictorError, match="text mode is 'tokens'"):
        predictor.query({s: BASE / s / f"{clip.video_uid}.pt" for s in SOURCES}, torch.zeros(4, 8))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, other)
    with pytest.raises(PredictorError, match="not an NLQModule checkpoint"):
        NLQPredictor.from_checkpoint(other)
    with pytest.raises(PredictorError, match="checkpoint not found"):
        NLQPredictor.from_checkpoint(tmp_path / "none.ckpt")


def test_checkpoint_records_how_its_inputs_were_made(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    provenance = state["Ego4DNLQDataModule"]["provenance"]
    assert [s["name"] for s in provenance["sources"]] == SOURCES
    assert [s["dim"] for s in provenance["sources"]] == [
        torch.load(BASE / s / "val-video-0004.pt", weights_only=True).shape[1] for s in SOURCES
    ]
    assert provenance["text"] == {"mode": "tokens", "manifest": None}


def test_query_command(checkpoint, submitted, capsys, tmp_path):
    ann, clips = _by_clip()
    clip_uid, queries = next(iter(clips.items()))
    clip = ann.clips[clip_uid]
    args = ["nlq", "query", str(checkpoint), "--clip", str(clip.video_start_sec), str(clip.video_end_sec)]
    args += [a for s in SOURCES for a in ("--video", f"{s}={BASE / s / f'{clip.video_uid}.pt'}")]
    args += [a for q in queries for a in ("--question", q.query)]
    out = tmp_path / "answers.json"
    assert main([*args, "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert queries[0].query in printed
    written = json.loads(out.read_text())
    assert [a["question"] for a in written] == [q.query for q in queries]
    entry = submitted[queries[0].key]
    assert torch.allclose(torch.tensor(written[0]["predicted_times"]), torch.tensor(entry["predicted_times"]))
    assert main(["nlq", "query", str(checkpoint), "--video", str(tmp_path / "x.pt"), "--question", "a"]) == 1
    assert "x.pt: not found" in capsys.readouterr().err


def test_save_pretrained_round_trip_in_the_hub_layout(predictor, checkpoint, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "nlq-demo"
    NLQPredictor.from_checkpoint(checkpoint, device="cpu").save_pretrained(out)  # one call converts
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "repsuite-nlq-predictor/1" and config["datamodule"]["features"] == SOURCES
    assert any(k.startswith("model.") for k in load_file(out / "model.safetensors"))
    again = NLQPredictor.from_pretrained(out, device="cpu")
    ann, clips = _by_clip()
    clip_uid, queries = next(iter(clips.items()))
    clip = ann.clips[clip_uid]
    files = {s: BASE / s / f"{clip.video_uid}.pt" for s in SOURCES}
    span = (clip.video_start_sec, clip.video_end_sec)
    assert again.query(files, queries[0].query, clip=span) == predictor.query(
        files, queries[0].query, clip=span
    )
    with pytest.raises(PredictorError, match="not a directory"):
        NLQPredictor.from_pretrained(tmp_path / "nowhere")
    (out / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(PredictorError, match="not an NLQ predictor folder"):
        NLQPredictor.from_pretrained(out)


def test_bf16_autocast_gives_nearly_the_same_windows(checkpoint, predictor):
    ann, clips = _by_clip()
    clip_uid, queries = next(iter(clips.items()))
    clip = ann.clips[clip_uid]
    files = {s: BASE / s / f"{clip.video_uid}.pt" for s in SOURCES}
    span = (clip.video_start_sec, clip.video_end_sec)
    bf16 = NLQPredictor.from_checkpoint(checkpoint, device="cpu", precision="bf16-mixed")
    fast, exact = (
        bf16.query(files, queries[0].query, clip=span),
        predictor.query(files, queries[0].query, clip=span),
    )
    assert fast.moments[0].score == pytest.approx(exact.moments[0].score, rel=0.1)
    overlap = min(fast.moments[0].end, exact.moments[0].end) - max(
        fast.moments[0].start, exact.moments[0].start
    )
    assert overlap > 0  # the best window is (nearly) the same one
    with pytest.raises(PredictorError, match="precision 'fp8'"):
        NLQPredictor.from_checkpoint(checkpoint, precision="fp8")
