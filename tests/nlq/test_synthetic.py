"""The synthetic download has the official layout and a learnable answer (an oracle finds it, chance not)."""

import json
import random

import pytest
import torch

from repsuite.nlq import evaluate_nlq
from repsuite.nlq.annotations import load_nlq_annotations
from repsuite.nlq.features import ROWS_PER_SEC, FeatureSource, concat_sources
from repsuite.nlq.synthetic import OBJECTS, SyntheticSpec, write_synthetic_ego4d


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("ego4d")
    spec = SyntheticSpec(num_videos={"train": 8, "val": 4, "test": 2}, clip_seconds=(40.0, 60.0), seed=3)
    return write_synthetic_ego4d(root, spec), spec


def test_layout_matches_the_official_download(synth):
    base, spec = synth
    assert sorted(p.name for p in (base / "annotations").iterdir()) == [
        "narration.json",  # Ego4D's narrations (for NaQ), all videos in one file
        "nlq_test_unannotated.json",
        "nlq_train.json",
        "nlq_val.json",
    ]
    val = json.loads((base / "annotations/nlq_val.json").read_text())
    assert val["version"] == "2.0" and "metadata" in val and "manifest" not in val
    test = json.loads((base / "annotations/nlq_test_unannotated.json").read_text())
    assert test["version"] == "1" and "manifest" in test
    assert set(test["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0]) == {"query"}
    for name, dim in spec.sources.items():
        files = list((base / name).glob("*.pt"))
        assert len(files) == sum(spec.num_videos.values())
        assert torch.load(files[0], weights_only=True).shape[1] == dim
    text = list((base / spec.text_source).glob("*_*.pt"))
    assert text and torch.load(text[0], weights_only=True).ndim == 2


def _clip_features(base, spec, ann, clip_uid):
    clip = ann.clips[clip_uid]
    parts = [
        (
            n,
            FeatureSource(n, base / n).clip_features(
                clip_uid, clip.video_uid, clip.video_start_sec, clip.video_end_sec
            ),
        )
        for n in spec.sources
    ]
    return concat_sources(parts)


def test_answer_is_learnable_from_features_and_question(synth):
    base, spec = synth
    train = load_nlq_annotations(base / "annotations/nlq_train.json")
    val = load_nlq_annotations(base / "annotations/nlq_val.json")
    gt = json.loads((base / "annotations/nlq_val.json").read_text())
    # "training": the mean feature inside each object's GT windows
    sums = {}
    for q in train.queries:
        x = _clip_features(base, spec, train, q.clip_uid)
        j0, j1 = round(q.gt_start * ROWS_PER_SEC), round(q.gt_end * ROWS_PER_SEC)
        obj = next(o for o in OBJECTS if f" {o}?" in q.query)
        sums.setdefault(obj, []).append(x[j0:j1].mean(0))
    proto = {o: torch.stack(v).mean(0) for o, v in sums.items()}
    oracle, chance = [], []
    rng = random.Random(0)
    for q in val.queries:
        x = _clip_features(base, spec, val, q.clip_uid)
        obj = next(o for o in OBJECTS if f" {o}?" in q.query)
        if obj not in proto:
            continue
        score = x @ proto[obj]  # (n,)
        hot = (score > score.mean() + 2 * score.std()).nonzero().flatten()
        s, e = (hot.min().item(), hot.max().item() + 1) if hot.numel() else (0, 1)
        n = x.shape[0]
        entry = {"clip_uid": q.clip_uid, "annotation_uid": q.annotation_uid, "query_idx": q.query_idx}
        oracle.append(entry | {"predicted_times": [[s / ROWS_PER_SEC, e / ROWS_PER_SEC]]})
        a = rng.uniform(0, n / ROWS_PER_SEC)
        chance.append(entry | {"predicted_times": [[a, a + (q.gt_end - q.gt_start)]]})
    good = evaluate_nlq(oracle, gt, thresholds=(0.3,), top_k=(1,)).recall[(0.3, 1)]
    rand = evaluate_nlq(chance, gt, thresholds=(0.3,), top_k=(1,)).recall[(0.3, 1)]
    assert len(oracle) >= 15
    assert good > 0.5 and good > 5 * max(rand, 0.02), (good, rand)


def test_committed_test_data_is_current(tmp_path):
    """tests/data/ego4d_nlq is what its data.py writes with the current generator (else regenerate it)."""
    import importlib.util

    from tests.conftest import ROOT

    data_dir = ROOT / "tests/data/ego4d_nlq"
    spec_mod = importlib.util.spec_from_file_location("ego4d_nlq_data", data_dir / "data.py")
    mod = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(mod)
    fresh = write_synthetic_ego4d(tmp_path, mod.SPEC)
    committed = data_dir / "v2"
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert fresh_files == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    for rel in fresh_files:
        if rel.suffix == ".json":
            assert json.loads((fresh / rel).read_text()) == json.loads((committed / rel).read_text()), rel
        else:
            a, b = (torch.load(d / rel, weights_only=True) for d in (fresh, committed))
            assert torch.equal(a, b), rel


def test_synth_tool(tmp_path, capsys):
    from repsuite.cli import main

    code = main(
        [
            "nlq",
            "synth",
            str(tmp_path),
            "--train-videos",
            "1",
            "--val-videos",
            "1",
            "--test-videos",
            "1",
            "--clips-per-video",
            "1",
            "--min-clip-seconds",
            "20",
            "--max-clip-seconds",
            "25",
        ]
    )
    assert code == 0 and "wrote a synthetic Ego4D NLQ download" in capsys.readouterr().out
    ann = load_nlq_annotations(tmp_path / "v2/annotations/nlq_val.json")
    assert len(ann.queries) == 3 and ann.has_ground_truth
    wide = tmp_path / "wide"
    assert (
        main(["nlq", "synth", str(wide), "--train-videos", "6", "--objects", "120", "--object-zipf", "0.5"])
        == 0
    )
    words = {
        q.query.rstrip("?").split()[-1]
        for q in load_nlq_annotations(wide / "v2/annotations/nlq_train.json").queries
    }
    assert words - set(OBJECTS)  # words beyond the default 24


def test_long_tailed_vocabulary_and_visible_narrated_actions(tmp_path):
    from repsuite.nlq.synthetic import MORE_OBJECTS

    spec = SyntheticSpec(
        num_videos={"train": 12, "val": 2, "test": 1},
        clip_seconds=(40.0, 60.0),
        sources={"slowfast8x8_r101_k400": 8},
        text_source="clip_text_vitb16",
        noise=0.0,  # the features are then the events and the narrated actions alone
        num_objects=120,
        object_zipf=1.0,
    )
    base = write_synthetic_ego4d(tmp_path, spec)
    queries = load_nlq_annotations(base / "annotations/nlq_train.json").queries
    named = [q.query.rstrip("?").split()[-1] for q in queries]
    assert set(named) <= set(spec.vocabulary) and set(named) & set(MORE_OBJECTS)  # beyond the first 24
    head, tail = sum(n in OBJECTS[:6] for n in named), sum(n in MORE_OBJECTS[-48:] for n in named)
    assert head > tail  # a long tail: the first six words are asked about more than the last 48
    assert (base / "clip_text_vitb16").is_dir() and any((base / "clip_text_vitb16").glob("*_*.pt"))
    narr = json.loads((base / "annotations/narration.json").read_text())
    video_uid = next(iter(narr))
    feats = torch.load(base / "slowfast8x8_r101_k400" / f"{video_uid}.pt", weights_only=True)
    narrated = narr[video_uid]["narration_pass_1"]["narrations"]
    fillers = [n for n in narrated if "the " not in n["narration_text"]]  # not an event's "... the cup"
    assert fillers
    for n in fillers:  # every narrated background action shows in the features around its time
        r = int(n["timestamp_sec"] * ROWS_PER_SEC)
        assert feats[max(0, r - 1) : r + 2].norm(dim=1).max() > 0, n
    with pytest.raises(ValueError, match="num_objects=500"):
        SyntheticSpec(num_objects=500)
