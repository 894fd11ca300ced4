"""What ``repsuite serve`` does behind the page: upload checks, clip catalogue, timeline (no browser)."""

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from repsuite.errors import InputError
from repsuite.faceswap import AlignedFaces
from repsuite.serve.catalogue import NLQCatalogue
from repsuite.serve.services import ServeError, UploadGuard, check_image, cut_video, parse_faces
from repsuite.serve.timeline import timeline_svg, window_iou
from tests.conftest import ROOT

DATA = ROOT / "tests/data/ego4d_nlq"


def test_upload_guard_reads_only_files_inside_the_upload_folder(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    ok = uploads / "abc" / "face.png"
    ok.write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    (uploads / "abc" / "link.png").symlink_to(tmp_path / "secret.txt")
    guard = UploadGuard([uploads])
    assert guard.check(str(ok), "photo") == ok.resolve()
    outside = (
        tmp_path / "secret.txt",
        uploads / "abc/../../secret.txt",
        uploads / "abc/link.png",
        "/etc/hostname",
    )
    for bad in outside:
        with pytest.raises(ServeError, match="not an uploaded file"):
            guard.check(str(bad), "photo")
    with pytest.raises(ServeError, match="nothing was uploaded"):
        guard.check(None, "photo")
    with pytest.raises(ServeError, match="no longer there"):
        guard.check(str(uploads / "abc/gone.png"), "photo")


def test_check_image_refuses_non_images_other_formats_and_huge_images(tmp_path):
    good = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(good)
    assert check_image(good, "source photo") == good
    text = tmp_path / "b.png"
    text.write_text("not pixels")
    with pytest.raises(ServeError, match="source photo: not an image"):
        check_image(text, "source photo")
    gif = tmp_path / "c.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with pytest.raises(ServeError, match="GIF images are not accepted"):
        check_image(gif, "target photo")
    huge = tmp_path / "d.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 megapixels, a few kilobytes on disk
    with pytest.raises(ServeError, match=r"too large \(8000 x 6000"):
        check_image(huge, "target photo")


def test_parse_faces():
    assert parse_faces("") == "largest" and parse_faces(" ALL ") == "all"
    assert parse_faces("0, 2") == [0, 2]
    with pytest.raises(ServeError, match="face numbers"):
        parse_faces("the left one")


def test_timeline_draws_each_window_and_the_truth():
    svg = timeline_svg(40.0, [(2.0, 5.5, 0.9), (10.0, 12.0, 0.5)], ground_truth=(3.0, 6.0))
    assert svg.count('class="window"') == 2 and svg.count('class="truth"') == 1
    assert 'data-start="2.00" data-end="5.50"' in svg and 'data-start="3.00" data-end="6.00"' in svg
    assert window_iou((2.0, 5.5), (3.0, 6.0)) == pytest.approx(2.5 / 4.0)
    assert window_iou((0.0, 1.0), (2.0, 3.0)) == 0.0


def test_catalogue_lists_the_checkpoints_clips_with_their_ground_truth_and_counts_missing_features(tmp_path):
    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    data = {"root": str(root), "version": "v2", "features": ["slowfast8x8_r101_k400", "clip_vitb16"]}
    full = NLQCatalogue.from_data(data)
    assert len(full) > 0 and not full.skipped
    clip = next(c for c in full.clips.values() if c.questions)
    q = clip.questions[0]
    assert clip.ground_truth(q.question.upper()) == q.window  # matched whatever the case
    rows = clip.feature_rows()
    assert set(rows) == {"slowfast8x8_r101_k400", "clip_vitb16"}
    assert all(t.ndim == 2 and t.shape[0] > 0 for t in rows.values())
    path, _ = clip.features["clip_vitb16"]
    path.unlink()  # a clip whose features are gone is counted, not silently dropped
    fewer = NLQCatalogue.from_data(data)
    assert len(fewer) == len(full) - 1 and sum(fewer.skipped.values()) == 1
    with pytest.raises(InputError, match="not one of this model's"):
        fewer.get(clip.label)
    gone = NLQCatalogue.from_data({"root": str(tmp_path / "nowhere"), "features": ["x"]})
    assert len(gone) == 0 and "not on this machine" in gone.reason


def test_aligned_faces_put_the_template_on_the_whole_image():
    faces = AlignedFaces()(torch.zeros(2, 3, 128, 64, dtype=torch.uint8))
    assert len(faces) == 2 and faces[0].boxes.tolist() == [[0.0, 0.0, 64.0, 128.0]]
    marks = faces[0].landmarks[0]  # (5, 2): eyes above the nose above the mouth, inside the image
    assert (marks[:, 0] < 64).all() and (marks[:, 1] < 128).all() and marks[0, 1] < marks[2, 1] < marks[3, 1]


def test_cut_video_keeps_the_window(tmp_path):
    pytest.importorskip("av")
    from repsuite.faceswap.synthetic import write_face_video

    src, _ = write_face_video(tmp_path / "clip.mp4", seconds=5.0, fps=10, size=(64, 48), face=32)
    out = cut_video(Path(src), 1.0, 3.0, tmp_path / "cut.mp4")
    import av

    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert 19 <= len(frames) <= 22  # 2 s at 10 fps (the frames at both ends included)


def test_nlq_service_answers_a_catalogue_clip_and_plays_the_best_window(checkpoint, tmp_path):
    pytest.importorskip("av")
    import av

    from repsuite.faceswap.synthetic import write_face_video
    from repsuite.nlq.predictor import NLQPredictor
    from repsuite.serve.services import NLQService

    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    predictor = NLQPredictor.from_checkpoint(checkpoint, device="cpu")
    catalogue = NLQCatalogue.from_data(dict(predictor.data, root=str(root)))
    clip = next(c for c in catalogue.clips.values() if c.questions)
    video, _ = write_face_video(root / "v2/clips" / f"{clip.clip_uid}.mp4", seconds=clip.duration, fps=4,
                                size=(64, 48), face=32, audio=False)  # fmt: skip
    catalogue = NLQCatalogue.from_data(dict(predictor.data, root=str(root)))  # now with the clip's video
    (tmp_path / "out").mkdir()
    service = NLQService(predictor, catalogue, tmp_path / "out", UploadGuard([tmp_path / "uploads"]))
    q = clip.questions[0]
    view = service.ask(clip.label, q.question, top_k=3)
    expected = predictor.query(clip.feature_rows(), q.question, top_k=3)
    assert [r[1:3] for r in view.rows] == [[round(m.start, 2), round(m.end, 2)] for m in expected.moments]
    best = expected.moments[0]
    assert view.rows[0][4] == round(window_iou((best.start, best.end), q.window), 3)
    assert "ground truth" in view.note and view.timeline.count('class="window"') == len(expected.moments)
    with av.open(str(view.clip)) as c:
        seconds = len(list(c.decode(video=0))) / 4
    assert abs(seconds - (best.end - best.start)) <= 0.6  # the best window, cut from the clip's video
    assert service.upload_refused  # these features were not made by extract-video
    with pytest.raises(ServeError, match="cannot encode videos"):
        service.ask(None, q.question, upload=str(video))
    with pytest.raises(ServeError, match="type a question"):
        service.ask(clip.label, "   ")


def test_face_service_swaps_a_short_video_and_refuses_a_long_one(tiny_ckpt, tmp_path):
    pytest.importorskip("av")
    from repsuite.faceswap import FaceSwapper
    from repsuite.serve.services import FaceService
    from tests.faceswap.test_swapper import FrameDetector, _frames
    from tests.helpers.videos import write_face_clip

    uploads, out = tmp_path / "uploads", tmp_path / "out"
    uploads.mkdir()
    out.mkdir()
    clip, truth = write_face_clip(uploads / "clip.mp4", seconds=2, fps=6, no_face_frames=2)
    source = uploads / "me.png"
    Image.fromarray(_frames(clip)[5].permute(1, 2, 0).numpy()).save(source)
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=FrameDetector([truth[5], *truth]), device="cpu")
    service = FaceService(swapper, out, UploadGuard([uploads]), max_video_seconds=20)
    path, report = service.swap_video(str(source), str(clip), "largest")
    assert path.parent == out and path.exists() and (report["frames"], report["swapped"]) == (12, 10)
    service.max_video_seconds = 1.0
    with pytest.raises(ServeError, match=r"target video: 2 s long; this page swaps at most 1 s"):
        service.swap_video(str(source), str(clip), "largest")
    (uploads / "notes.mp4").write_text("not a video")
    with pytest.raises(ServeError, match="not a video this page can read"):
        service.swap_video(str(source), str(uploads / "notes.mp4"), "largest")


def test_serve_binds_to_this_machine_only_by_default_and_needs_a_checkpoint(capsys):
    from repsuite.serve.cli import _parser, main

    assert _parser().parse_args(["--nlq-ckpt", "x.ckpt"]).host == "127.0.0.1"
    assert main([]) == 2 and "give --nlq-ckpt and/or --faceswap-ckpt" in capsys.readouterr().err


def test_face_service_says_when_no_face_is_found(tiny_ckpt, faces, tmp_path):
    """The page shows this message (every InputError becomes one): here from a detector that finds nothing."""
    from repsuite.faceswap import Faces, FaceSwapper, GivenFaces
    from repsuite.serve.services import FaceService

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(faces / "pairs/source/0000.png", uploads / name)
    none = Faces(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([none]), device="cpu")
    service = FaceService(swapper, tmp_path, UploadGuard([uploads]))
    with pytest.raises(InputError, match=r"a\.png: no face found"):
        service.swap_image(str(uploads / "a.png"), str(uploads / "b.png"), "largest")
