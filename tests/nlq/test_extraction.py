"""``repsuite nlq extract-video``: real video files in, official-layout feature files out.

A tiny open_clip model config (32 px images) with a state dict the test writes keeps this fast; the
pipeline is the one a ViT-B-16 run uses.
"""

import json
import shutil
import subprocess

import pytest
import torch

from repsuite.cli import main
from repsuite.nlq.extract.frame_encoder import FrameEncoder
from repsuite.nlq.extract.video import decode_rows, frames_30fps, probe_video, row_frame_indices
from repsuite.nlq.features import official_num_rows
from repsuite.nlq.predictor import NLQPredictor, PredictorError
from tests.conftest import PYTHON, subprocess_env
from tests.helpers.videos import write_video
from tests.nlq.test_clip_text import _checkpoint, _config

LENGTHS = {"vid-a": (96, 30), "vid-b": (161, 30), "vid-c": (100, 24), "vid-d": (150, 60)}


@pytest.fixture
def setup(tmp_path):
    config = _config(tmp_path)
    ckpt, _ = _checkpoint(tmp_path, config)
    videos = tmp_path / "videos"
    for uid, (n, fps) in LENGTHS.items():
        write_video(videos / f"{uid}.mp4", n, fps)
    return config, ckpt, videos


def _args(config, ckpt, *extra):
    return ["nlq", "extract-video", "--model", str(config), "--checkpoint", str(ckpt), "--num-workers", "0",
            "--accelerator", "cpu", "--batch-size", "5", *extra]  # fmt: skip


def test_extracts_official_rows_and_skips_finished_videos(setup, tmp_path, capsys):
    config, ckpt, videos = setup
    out = tmp_path / "clip_vitb16"
    assert main(_args(config, ckpt, str(videos), "-o", str(out))) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for uid, (n, fps) in LENGTHS.items():
        feats = torch.load(out / f"{uid}.pt", weights_only=True)
        rows = official_num_rows(int(n * 30 / fps + 1e-6))
        assert feats.shape == (rows, 16) and feats.dtype == torch.float32
        assert manifest["videos"][uid]["rows"] == rows
    assert manifest["encoder"]["dim"] == 16 and len(manifest["encoder"]["checkpoint_sha256"]) == 64
    assert manifest["sampling"]["rule"] == "center" and not list(out.glob(".*"))
    # the file equals encoding the sampled frames directly
    encoder = FrameEncoder("open_clip", str(config), str(ckpt))
    info = probe_video(videos / "vid-c.mp4")
    frames = torch.cat([c for _, c in decode_rows(info, row_frame_indices(frames_30fps(info)), 32)])
    torch.testing.assert_close(torch.load(out / "vid-c.pt", weights_only=True), encoder(frames))
    # a second run skips everything; --overwrite redoes it
    mtime = (out / "vid-a.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_args(config, ckpt, str(videos), "-o", str(out))) == 0
    assert "done 0, skipped 4" in capsys.readouterr().out and (out / "vid-a.pt").stat().st_mtime_ns == mtime
    assert main(_args(config, ckpt, str(videos), "-o", str(out), "--overwrite")) == 0
    assert "done 4, skipped 0" in capsys.readouterr().out
    # a run that stopped before writing its manifest: the next run records the files it skips
    manifest_path = out / "manifest.json"
    data = json.loads(manifest_path.read_text())
    del data["videos"]["vid-b"]
    manifest_path.write_text(json.dumps(data))
    assert main(_args(config, ckpt, str(videos), "-o", str(out))) == 0
    assert json.loads(manifest_path.read_text())["videos"]["vid-b"]["rows"] == official_num_rows(161)
    # another sampling rule into the same folder would mix features: refused
    assert main(_args(config, ckpt, str(videos), "-o", str(out), "--sampling", "random")) == 1
    assert "sampling" in capsys.readouterr().err


def test_bad_videos_are_reported_and_the_rest_extracted(setup, tmp_path, capsys):
    config, ckpt, videos = setup
    (videos / "empty.mp4").write_bytes(b"")
    write_video(videos / "short.mp4", 20, 30)
    data = (videos / "vid-b.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "feats"
    assert main(_args(config, ckpt, str(videos), "-o", str(out))) == 1
    text = capsys.readouterr().out
    assert "done 4, skipped 0 (already extracted), failed 3" in text
    assert "empty.mp4" in text and "cut.mp4" in text and "short.mp4: shorter than one window" in text
    assert sorted(p.name for p in out.glob("*.pt")) == [f"{u}.pt" for u in LENGTHS]
    assert set(json.loads((out / "manifest.json").read_text())["failed"]) == {"empty", "short", "cut"}


def test_annotation_mode_extracts_only_needed_videos_and_names_missing_ones(setup, tmp_path, capsys):
    config, ckpt, videos = setup
    clips = [
        {
            "clip_uid": f"clip-{u}",
            "video_uid": u,
            "video_start_sec": 0.0,
            "video_end_sec": 2.0,
            "annotations": [],
        }
        for u in ("vid-a", "vid-d", "vid-zzz")
    ]
    ann = tmp_path / "nlq_val.json"
    ann.write_text(
        json.dumps({"version": "1", "videos": [{"video_uid": c["video_uid"], "clips": [c]} for c in clips]})
    )
    out = tmp_path / "feats"
    assert (
        main(_args(config, ckpt, "--annotations", str(ann), "--video-dir", str(videos), "-o", str(out))) == 1
    )
    assert sorted(p.name for p in out.glob("*.pt")) == ["vid-a.pt", "vid-d.pt"]
    assert "vid-zzz.mp4: missing video for annotated clip(s) ['clip-vid-zzz']" in capsys.readouterr().out


def test_checkpoint_that_does_not_match_the_model_is_named(setup, tmp_path, capsys):
    config, _, videos = setup
    wide = _config(tmp_path, name="wide", width=32)
    other = _config(tmp_path, name="other")
    cfg = json.loads(other.read_text())
    cfg["vision_cfg"]["width"] = 64
    other.write_text(json.dumps(cfg))
    ckpt, _ = _checkpoint(tmp_path, other, name="other.pt")
    assert main(_args(config, ckpt, str(videos), "-o", str(tmp_path / "o"))) == 1
    assert "other.pt: does not match open_clip model 'tiny-clip' (image tower)" in capsys.readouterr().err
    assert wide.exists()


def test_config_file_sets_defaults_and_flags_override(setup, tmp_path):
    config, ckpt, videos = setup
    cfg = tmp_path / "extract.yaml"
    cfg.write_text(f"model: {config}\ncheckpoint: {ckpt}\nsampling: random\nseed: 7\nnum_workers: 0\n")
    out = tmp_path / "feats"
    assert (
        main(["nlq", "extract-video", "--config", str(cfg), str(videos), "-o", str(out), "--seed", "8"]) == 0
    )
    assert json.loads((out / "manifest.json").read_text())["sampling"] | {} == {
        "rule": "random", "seed": 8, "window_frames": 32, "stride_frames": 16, "fps": 30,
    }  # fmt: skip
    cfg.write_text("modle: x\n")
    with pytest.raises(SystemExit):
        main(["nlq", "extract-video", "--config", str(cfg), str(videos), "-o", str(out)])


@pytest.mark.slow
def test_two_process_ddp_writes_each_video_once_and_matches_one_process(setup, tmp_path):
    config, ckpt, videos = setup
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(_args(config, ckpt, str(videos), "-o", str(single))) == 0
    cmd = [PYTHON, "-m", "repsuite", *_args(config, ckpt, str(videos), "-o", str(multi)),
           "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done 4, skipped 0" in res.stdout
    manifest = json.loads((multi / "manifest.json").read_text())
    assert sorted(manifest["videos"][u]["rank"] for u in LENGTHS) == [0, 0, 1, 1]  # each by exactly one rank
    for uid in LENGTHS:
        a = torch.load(single / f"{uid}.pt", weights_only=True)
        b = torch.load(multi / f"{uid}.pt", weights_only=True)
        torch.testing.assert_close(a, b)
    assert not list(multi.glob(".*"))


@pytest.mark.slow
def test_videos_to_features_to_a_trained_model(setup, tmp_path, in_tmp):
    """Synthetic videos → extract-video + extract-text → repsuite fit reading those features."""
    from repsuite.cli import run_cli

    config, ckpt, _ = setup
    other, _ = _checkpoint(tmp_path, config, seed=1, name="other.pt")
    root = tmp_path / "ego4d" / "v2"
    videos = tmp_path / "raw"
    split_videos = {"train": ["tr-0", "tr-1"], "val": ["va-0"]}
    for split, uids in split_videos.items():
        entries = []
        for uid in uids:
            write_video(videos / f"{uid}.mp4", 30 * 24, 30)  # 24 s, 43 rows
            queries = [
                {"clip_start_sec": 2.0, "clip_end_sec": 6.0, "video_start_sec": 3.0, "video_end_sec": 7.0,
                 "query": f"where is the cup {i}?", "template": "Objects: Where is object X?"}
                for i in range(3)
            ]  # fmt: skip
            clip = {"clip_uid": f"{uid}-c", "video_start_sec": 1.0, "video_end_sec": 21.0,
                    "annotations": [{"annotation_uid": f"{uid}-a", "language_queries": queries}]}  # fmt: skip
            entries.append({"video_uid": uid, "clips": [clip]})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"nlq_{split}.json").write_text(
            json.dumps({"version": "1", "videos": entries})
        )
    anns = [str(root / "annotations" / f"nlq_{s}.json") for s in split_videos]
    xv = ["--annotations", *anns, "--video-dir", str(videos), "-o", str(root / "clip_frames")]
    assert main(_args(config, ckpt, *xv)) == 0
    text = ["nlq", "extract-text", *anns, "-o", str(root / "clip_text"), "--model", str(config)]
    assert main([*text, "--checkpoint", str(ckpt)]) == 0
    cli = run_cli(
        [
            "fit", "--model=NLQModule", "--model.hidden=16", "--model.num_heads=2", "--model.ffn=32",
            "--model.span_layers=1", "--data=Ego4DNLQDataModule", f"--data.root={root.parent}",
            "--data.features=[clip_frames]", "--data.text=features", "--data.text_features=clip_text",
            "--data.batch_size=3", "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    assert cli.model.hparams.video_dim == 16 and cli.model.hparams.text_dim == 24
    assert torch.isfinite(cli.trainer.callback_metrics["val/mIoU"])
    # the trained model answers about the raw video: frames and question encoded as in training
    ckpt_path = cli.trainer.checkpoint_callback.best_model_path
    predictor = NLQPredictor.from_checkpoint(ckpt_path, device="cpu")
    questions = [f"where is the cup {i}?" for i in range(3)]
    by_video = predictor.query(videos / "va-0.mp4", questions, clip=(1.0, 21.0))
    by_file = predictor.query(root / "clip_frames" / "va-0.pt", questions, clip=(1.0, 21.0))
    for a, b in zip(by_video, by_file, strict=True):
        assert a.windows == b.windows and a.scores == pytest.approx(b.scores, rel=1e-5)
    out = tmp_path / "val.json"
    assert main(["nlq", "submit", ckpt_path, "--split", "val", "-o", str(out), "--accelerator", "cpu"]) == 0
    for entry, answer in zip(json.loads(out.read_text())["results"], by_video, strict=True):
        assert torch.allclose(torch.tensor(entry["predicted_times"]), torch.tensor(answer.windows), atol=1e-6)
    with pytest.raises(PredictorError, match="not the weights the features were made with"):
        NLQPredictor.from_checkpoint(ckpt_path, device="cpu", weights={"clip_frames": str(other)}).query(
            videos / "va-0.mp4", questions[0]
        )
    shutil.rmtree(videos)


def test_timm_encoder_uses_the_models_own_preprocessing(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False)  # with its classifier, as released checkpoints are
    torch.save(net.state_dict(), tmp_path / "test_vit.pth")
    enc = FrameEncoder("timm", "test_vit", str(tmp_path / "test_vit.pth"))
    p = enc.preprocess
    assert (p.crop, p.resize_to, p.mean) == ((160, 160), 168, (0.5, 0.5, 0.5))  # 160 / crop_pct 0.95
    frames = torch.randint(0, 256, (2, 3, 168, 200), dtype=torch.uint8)
    x = frames[..., 4:164, 20:180].float() / 255
    net.reset_classifier(0)
    torch.testing.assert_close(enc(frames), net.eval()((x - 0.5) / 0.5))
    torch.save({"blocks.0.norm1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: does not match timm model 'test_vit'"):
        FrameEncoder("timm", "test_vit", str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="random_init=True"):
        FrameEncoder("timm", "test_vit")


def test_progress_bar_on_a_terminal(setup, tmp_path, monkeypatch, capsys):
    config, ckpt, videos = setup
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(_args(config, ckpt, str(videos), "-o", str(tmp_path / "f"))) == 0
    out = capsys.readouterr().out
    assert "extract-video (rank 0 of 1)" in out and "4/4" in out and "frames/s" in out
