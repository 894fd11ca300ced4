"""``FaceSwapper`` on photos with several faces, and RetinaFace from its published key layout."""

import itertools
import json
import math

import pytest
import torch
from PIL import Image

from repsuite.checkpoints import CheckpointError
from repsuite.cli import main
from repsuite.faceswap.align import face_template, warp_affine
from repsuite.faceswap.detection import (
    Faces,
    GivenFaces,
    RetinaFaceConfig,
    decode_boxes,
    decode_landmarks,
    load_retinaface,
    prior_boxes,
)
from repsuite.faceswap.model import CompiledFixedSource, FixedSourceGenerator
from repsuite.faceswap.swapper import FaceSwapper, SwapError, face_mask
from repsuite.faceswap.synthetic import render_face, sample_attributes, sample_identity

# ------------------------------------------------------------------------------------------ a photo
#: (centre x, centre y, face size in px, rotation in degrees) of the three faces, left to right
PLACES = [(50.0, 60.0, 64.0, -15.0), (130.0, 50.0, 40.0, 0.0), (200.0, 70.0, 80.0, 20.0)]


def _similarity(size: int, cx: float, cy: float, side: float, degrees: float) -> torch.Tensor:
    """Aligned face pixel → photo pixel (2, 3): scale to ``side``, rotate, centre at (cx, cy)."""
    a = math.radians(degrees)
    s = side / size
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
    c = torch.tensor([(size - 1) / 2, (size - 1) / 2])
    t = torch.tensor([cx, cy]) - rot @ c
    return torch.cat([rot, t[:, None]], dim=1)


@pytest.fixture(scope="module")
def scene():
    """A 250 × 140 photo with three rendered faces at different sizes and angles, and their true faces."""
    g = torch.Generator().manual_seed(3)
    size = 64
    photo = torch.full((1, 3, 140, 250), 0.35)
    boxes, marks = [], []
    for cx, cy, side, deg in PLACES:
        img, lm = render_face(sample_identity(g), sample_attributes(g), size)
        m = _similarity(size, cx, cy, side, deg)
        square = warp_affine(torch.ones(1, 1, size, size), m[None], (140, 250))
        photo = photo * (1 - square) + warp_affine(img[None], m[None], (140, 250)) * square
        pts = lm @ m[:, :2].T + m[:, 2]  # (5, 2) in the photo
        corners = torch.tensor([[0.0, 0.0], [size, 0.0], [0.0, size], [size, size]]) @ m[:, :2].T + m[:, 2]
        boxes.append(torch.cat([corners.min(0).values, corners.max(0).values]))
        marks.append(pts)
    pixels = (photo[0] * 255).round().to(torch.uint8)
    truth = Faces(torch.stack(boxes), torch.ones(3), torch.stack(marks))
    return pixels, truth


def test_chosen_faces_only_change_and_the_rest_is_bit_identical(tiny_ckpt, scene):
    pixels, truth = scene
    shuffled = truth.select([2, 0, 1])  # the detector's own order does not matter: faces count left to right
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([shuffled]), device="cpu")
    source = pixels[:, 20:110, 10:100].contiguous()  # a crop holding the first face: the source photo
    crop_face = Faces(truth.boxes[:1] - torch.tensor([10.0, 20.0, 10.0, 20.0]), truth.scores[:1],
                      truth.landmarks[:1] - torch.tensor([10.0, 20.0]))  # fmt: skip
    swapper.detector = GivenFaces([crop_face])
    identity = swapper.identity(source)  # computed once, used for every target below
    swapper.detector = GivenFaces([shuffled])
    result = swapper.swap(identity, pixels, faces=[0, 2])
    assert result.image.shape == pixels.shape and result.image.dtype == torch.uint8
    assert torch.equal(result.faces.boxes, truth.boxes[[0, 2]])
    # the support of each pasted mask, computed here from the true landmarks and the documented ellipse
    size = swapper.size
    mask = face_mask(size)
    changed = torch.zeros(140, 250, dtype=torch.bool)
    for i in (0, 2):
        from repsuite.faceswap.align import estimate_similarity

        m = estimate_similarity(truth.landmarks[i : i + 1], face_template(size)[None])  # photo → aligned
        inv = torch.linalg.inv(torch.cat([m[0], torch.tensor([[0.0, 0.0, 1.0]])]))[:2]
        changed |= warp_affine(mask, inv[None], (140, 250))[0, 0] > 0
    outside = ~changed
    assert torch.equal(result.image[:, outside], pixels[:, outside])  # bit-identical outside the masks
    diff = (result.image.int() - pixels.int()).abs().sum(0)
    assert diff[changed].float().mean() > 2  # the swapped faces did change
    cx, cy = int(PLACES[1][0]), int(PLACES[1][1])
    assert torch.equal(
        result.image[:, cy - 15 : cy + 15, cx - 15 : cx + 15], pixels[:, cy - 15 : cy + 15, cx - 15 : cx + 15]
    )
    # largest = the third face; all = every face
    assert torch.equal(swapper.swap(identity, pixels).faces.boxes, truth.boxes[[2]])
    assert len(swapper.swap(identity, pixels, faces="all").faces) == 3


def test_swap_aligned_folds_each_identity_once_with_the_general_paths_swaps(tiny_ckpt, scene):
    pixels, truth = scene
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([truth]), device="cpu")
    gen = swapper.module.swap_generator()
    aligned, _ = swapper._align(pixels, truth.landmarks)  # (3, 3, S, S)
    first = swapper.identity(pixels, face=0)
    second = swapper.identity(pixels, face=2)
    folded = []
    for identity in (first, first, second):
        general = gen(aligned, identity.embedding.expand(3, -1), randomize_noise=False).clamp(-1, 1)
        torch.testing.assert_close(swapper.swap_aligned(identity, aligned), general, rtol=1e-4, atol=1e-5)
        folded.append(swapper._fixed[1])
    assert folded[0] is folded[1] and folded[2] is not folded[0]  # folded once per identity


def test_bf16_precision_runs_channels_last_close_to_float32(tiny_ckpt, scene):
    pixels, truth = scene
    exact = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([truth]), device="cpu")
    fast = FaceSwapper.from_checkpoint(
        tiny_ckpt, detector=GivenFaces([truth]), device="cpu", precision="bf16-mixed"
    )
    gen = fast.module.swap_generator()
    assert gen.conv_body_first.weight.is_contiguous(memory_format=torch.channels_last)
    aligned, _ = exact._align(pixels, truth.landmarks)
    identity = exact.identity(pixels, face=0)
    want, got = exact.swap_aligned(identity, aligned), fast.swap_aligned(identity, aligned)
    assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == want.shape
    err = (got - want).abs()
    assert err.mean() < 0.02 and err.max() < 0.25, (err.mean(), err.max())  # bf16 rounding, not another swap
    with pytest.raises(SwapError, match="precision '16-mixed'"):
        FaceSwapper.from_checkpoint(tiny_ckpt, device="cpu", precision="16-mixed")


@pytest.mark.slow  # Inductor compiles the folded generator (~30 s on 2 CPU cores)
def test_compile_runs_the_folded_generator_compiled_with_the_same_swaps(
    tiny_ckpt, scene, tmp_path, monkeypatch, capsys
):
    pixels, truth = scene
    exact = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([truth]), device="cpu")
    fast = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([truth]), device="cpu", compile=True)
    aligned, _ = exact._align(pixels, truth.landmarks)  # (3, 3, S, S)
    identity = exact.identity(pixels, face=0)
    want = exact.swap_aligned(identity, aligned)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    got = fast.swap_aligned(identity, aligned)
    assert counters["stats"]["unique_graphs"] > graphs  # Dynamo captured a graph: not an eager fallback
    runner = fast._fixed[1]
    assert isinstance(runner, CompiledFixedSource) and isinstance(runner.fixed, FixedSourceGenerator)
    assert runner.generator.conv_body_first.weight.is_contiguous(memory_format=torch.channels_last)
    assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float rounding of fused kernels only
    graphs = counters["stats"]["unique_graphs"]
    again = fast.swap_aligned(identity, aligned.flip(-1))  # same source and shape: no second fold
    assert fast._fixed[1] is runner and counters["stats"]["unique_graphs"] == graphs  # nor a recompile
    torch.testing.assert_close(again, exact.swap_aligned(identity, aligned.flip(-1)), rtol=1e-4, atol=1e-4)
    # the command line: --compile and --precision need the photo/video mode, said in words
    args = ["faceswap", "swap", "--ckpt", tiny_ckpt, "--source", "a.png", "--target", "b.png", "-o", "c.png"]
    assert main([*args, "--compile"]) == 2
    assert "--compile apply with --detector" in capsys.readouterr().err
    photo, out = tmp_path / "group.png", tmp_path / "swapped.png"
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(photo)
    monkeypatch.setattr("repsuite.faceswap.swapper.load_retinaface", lambda path: GivenFaces([truth]))
    (tmp_path / "det.pth").write_bytes(b"")
    cli = ["faceswap", "swap", "--ckpt", tiny_ckpt, "--source", str(photo), "--target", str(photo)]
    cli += ["--detector", str(tmp_path / "det.pth"), "--compile", "--faces", "0"]
    assert main([*cli, "-o", str(out)]) == 0
    assert "1 face(s)" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (250, 140)


def test_provenance_in_png_and_jpeg_and_atomic_writes(tiny_ckpt, scene, tmp_path):
    pixels, truth = scene
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([truth]), device="cpu")
    result = swapper.swap(pixels, pixels, faces="largest")
    png = result.save(tmp_path / "out.png")
    with Image.open(png) as im:
        assert im.text["synthetic"] == "true" and len(im.text["repsuite-checkpoint-sha256"]) == 64
    jpg = result.save(tmp_path / "out.jpg")
    with Image.open(jpg) as im:
        record = json.loads(im.getexif()[0x010E])
        assert record["content"] == "face swap" and "repsuite" in im.info.get("xmp", b"").decode()
    with pytest.raises(SwapError, match=r"write \.png or \.jpg"):
        result.save(tmp_path / "out.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg", "out.png"]  # no partial files left


def test_bad_inputs_are_named(tiny_ckpt, scene, tmp_path):
    pixels, truth = scene
    none = Faces(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([none]), device="cpu")
    with pytest.raises(SwapError, match="no face found"):
        swapper.swap(pixels, pixels)
    swapper.detector = GivenFaces([truth])
    with pytest.raises(SwapError, match=r"faces \[5\] asked for, but 3 were found"):
        swapper.swap(pixels, pixels, faces=[5])
    with pytest.raises(SwapError, match="faces='0,2': expected 'largest', 'all', an index"):
        swapper.swap(pixels, pixels, faces="0,2")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SwapError, match=r"bad\.jpg: cannot be read as an image"):
        swapper.swap(pixels, bad)
    with pytest.raises(SwapError, match="not a FaceSwapModule checkpoint"):
        other = tmp_path / "nlq.ckpt"
        torch.save({"state_dict": {"model.x": torch.zeros(1)}}, other)
        FaceSwapper.from_checkpoint(other)
    wrong = tmp_path / "arcface.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(CheckpointError, match="not a RetinaFace checkpoint"):
        FaceSwapper.from_checkpoint(tiny_ckpt, detector=wrong)
    with pytest.raises(SwapError, match="no face detector"):
        FaceSwapper.from_checkpoint(tiny_ckpt).swap(pixels, pixels)


def test_swap_command_on_photos(tiny_ckpt, scene, tmp_path, monkeypatch, capsys):
    pixels, truth = scene
    photo = tmp_path / "group.png"
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(photo)
    monkeypatch.setattr("repsuite.faceswap.swapper.load_retinaface", lambda path: GivenFaces([truth]))
    (tmp_path / "det.pth").write_bytes(b"")
    out = tmp_path / "swapped.jpg"
    args = ["faceswap", "swap", "--ckpt", tiny_ckpt, "--source", str(photo), "--target", str(photo)]
    assert main([*args, "--detector", str(tmp_path / "det.pth"), "--faces", "0,2", "-o", str(out)]) == 0
    assert "2 face(s)" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (250, 140)
    bad = tmp_path / "none.png"
    missing = [*args[:6], "--target", str(tmp_path / "missing.png"), "--detector", str(tmp_path / "det.pth")]
    assert main([*missing, "-o", str(bad)]) == 1
    assert "missing.png: target not found" in capsys.readouterr().err and not bad.exists()


# ------------------------------------------------------------------------------------------ RetinaFace
def _official_keys(body: str) -> dict[str, torch.Size]:
    """The key layout of detection_Resnet50_Final.pth / mobilenet0.25_Final.pth, written out here.

    Body: torchvision's ResNet-50 up to layer4 (IntermediateLayerGetter keeps conv1, bn1, layer1..4), or
    MobileNetV1-0.25 stage1..3 (conv_bn then conv_dw blocks: depthwise conv, BN, pointwise conv, BN).
    """
    keys: dict[str, torch.Size] = {}

    def bn(prefix, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{n}"] = torch.Size([c])
        keys[f"{prefix}.num_batches_tracked"] = torch.Size([])

    def conv(prefix, c_out, c_in, k):
        keys[f"{prefix}.weight"] = torch.Size([c_out, c_in, k, k])

    if body == "resnet50":
        from torchvision.models import resnet50

        for k, v in resnet50(weights=None).state_dict().items():
            if not k.startswith("fc."):
                keys[f"body.{k}"] = v.shape
        levels, out = (512, 1024, 2048), 256
    else:
        conv("body.stage1.0.0", 8, 3, 3)
        bn("body.stage1.0.1", 8)
        plan = {"stage1": [(8, 16), (16, 32), (32, 32), (32, 64), (64, 64)],
                "stage2": [(64, 128)] + [(128, 128)] * 5, "stage3": [(128, 256), (256, 256)]}  # fmt: skip
        for stage, blocks in plan.items():
            for i, (c_in, c_out) in enumerate(blocks, start=1 if stage == "stage1" else 0):
                keys[f"body.{stage}.{i}.0.weight"] = torch.Size([c_in, 1, 3, 3])
                bn(f"body.{stage}.{i}.1", c_in)
                conv(f"body.{stage}.{i}.3", c_out, c_in, 1)
                bn(f"body.{stage}.{i}.4", c_out)
        levels, out = (64, 128, 256), 64
    for i, c in enumerate(levels, 1):
        conv(f"fpn.output{i}.0", out, c, 1)
        bn(f"fpn.output{i}.1", out)
    for i in (1, 2):
        conv(f"fpn.merge{i}.0", out, out, 3)
        bn(f"fpn.merge{i}.1", out)
    for s in (1, 2, 3):
        for name, c_out, c_in in [("conv3X3", out // 2, out), ("conv5X5_1", out // 4, out),
                                  ("conv5X5_2", out // 4, out // 4), ("conv7X7_2", out // 4, out // 4),
                                  ("conv7x7_3", out // 4, out // 4)]:  # fmt: skip
            conv(f"ssh{s}.{name}.0", c_out, c_in, 3)
            bn(f"ssh{s}.{name}.1", c_out)
    for head, n in (("ClassHead", 4), ("BboxHead", 8), ("LandmarkHead", 20)):
        for i in range(3):
            conv(f"{head}.{i}.conv1x1", n, out, 1)
            keys[f"{head}.{i}.conv1x1.bias"] = torch.Size([n])
    return keys


@pytest.mark.parametrize("body", ["resnet50", "mobilenet0.25"])
def test_loads_the_published_key_layout_with_its_module_prefix(body, tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {
        f"module.{k}": torch.randn(s, generator=g) if s else torch.tensor(0)
        for k, s in _official_keys(body).items()
    }
    state = {k: v.abs() if "running_var" in k else v for k, v in state.items()}
    path = tmp_path / "retinaface.pth"
    torch.save(state, path)
    detector = load_retinaface(path)
    assert detector.net.cfg.body == body
    loaded = detector.net.state_dict()
    assert all(torch.equal(loaded[k[len("module.") :]], v) for k, v in state.items())
    boxes, logits, marks = detector.net(torch.zeros(1, 3, 64, 96))
    priors = prior_boxes(detector.net.cfg, 64, 96)
    assert boxes.shape == (1, len(priors), 4) and logits.shape[1] == marks.shape[1] == len(priors)
    del state[f"module.{'ClassHead.0.conv1x1.bias'}"]
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \['ClassHead.0.conv1x1.bias'\].*extra.weight"):
        load_retinaface(path)


def test_priors_and_decoding_match_a_plain_recomputation():
    cfg = RetinaFaceConfig("mobilenet0.25")
    h, w = 70, 100
    priors = prior_boxes(cfg, h, w)
    plain = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes, strict=True):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for s in sizes:
                    plain.append([(j + 0.5) * step / w, (i + 0.5) * step / h, s / w, s / h])
    torch.testing.assert_close(priors, torch.tensor(plain))
    g = torch.Generator().manual_seed(1)
    loc, pre = torch.randn(len(priors), 4, generator=g), torch.randn(len(priors), 10, generator=g)
    boxes, marks = decode_boxes(loc, priors), decode_landmarks(pre, priors)
    for p in (0, 57, len(priors) - 1):
        cx, cy, pw, ph = priors[p].tolist()
        x = cx + loc[p, 0] * 0.1 * pw
        y = cy + loc[p, 1] * 0.1 * ph
        bw, bh = pw * math.exp(loc[p, 2] * 0.2), ph * math.exp(loc[p, 3] * 0.2)
        torch.testing.assert_close(boxes[p], torch.tensor([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2]))
        for k in range(5):
            want = [cx + pre[p, 2 * k] * 0.1 * pw, cy + pre[p, 2 * k + 1] * 0.1 * ph]
            torch.testing.assert_close(marks[p, k], torch.tensor(want))


def test_detector_thresholds_decodes_to_pixels_and_suppresses_duplicates(tmp_path, monkeypatch):
    state = {k: torch.zeros(s) if s else torch.tensor(0) for k, s in _official_keys("mobilenet0.25").items()}
    state = {k: torch.ones_like(v) if "running_var" in k else v for k, v in state.items()}
    torch.save(state, tmp_path / "m.pth")
    detector = load_retinaface(tmp_path / "m.pth", max_size=None)
    priors = prior_boxes(detector.net.cfg, 64, 96)
    logits, loc = torch.zeros(2, len(priors), 2), torch.zeros(2, len(priors), 4)
    logits[0, 10, 1], logits[0, 11, 1] = 5.0, 4.5  # the two anchors (16, 32 px) of one cell ...
    loc[0, 11, 2:] = math.log(0.5) / 0.2  # ... the second regressed to the first's box: NMS keeps one
    logits[0, 200, 1] = 4.0  # another face
    logits[1, 200, 1] = 1.0  # below the 0.8 threshold (p = 0.73)

    def fake(x):
        return loc, logits, torch.zeros(2, len(priors), 10)

    monkeypatch.setattr(detector.net, "forward", fake)
    found = detector(torch.zeros(2, 3, 64, 96, dtype=torch.uint8))
    assert len(found[0]) == 2 and len(found[1]) == 0
    cx, cy, pw, ph = priors[10].tolist()
    want = torch.tensor([(cx - pw / 2) * 96, (cy - ph / 2) * 64, (cx + pw / 2) * 96, (cy + ph / 2) * 64])
    torch.testing.assert_close(found[0].boxes[0], want)
    torch.testing.assert_close(found[0].landmarks[0], torch.tensor([[cx * 96, cy * 64]] * 5))
    assert found[0].scores[0] > found[0].scores[1]


# ------------------------------------------------------------------------------------------ video
class FrameDetector:
    """Ground truth per frame (by call order), optionally failing on some frames."""

    def __init__(self, truth, fail_on=()):
        self.truth, self.fail_on, self.calls = truth, set(fail_on), []

    def __call__(self, images):
        index = len(self.calls)
        self.calls.append(index)
        if index in self.fail_on:
            raise RuntimeError("detector crashed")
        return [self.truth[index]]


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in c.decode(video=0)]


def test_video_end_to_end_with_audio_label_and_counts(tiny_ckpt, tmp_path):
    import av

    from tests.helpers.videos import write_face_clip

    clip, truth = write_face_clip(tmp_path / "clip.mp4", seconds=5, fps=12)
    swapper = FaceSwapper.from_checkpoint(
        tiny_ckpt, detector=FrameDetector(truth, fail_on=[20]), device="cpu"
    )
    source = tmp_path / "me.png"
    Image.fromarray(_frames(clip)[30].permute(1, 2, 0).numpy()).save(source)
    swapper.detector = GivenFaces([truth[30]])
    identity = swapper.identity(source)
    swapper.detector = FrameDetector(truth, fail_on=[20])
    report = swapper.swap_video(identity, clip, tmp_path / "out.mp4", batch_size=4, progress=False)
    assert (report.frames, report.no_face, report.failed, report.swapped) == (60, 6, 1, 53)
    assert "frame 20: detection failed" in report.failures[0] and report.fps > 0
    assert set(report.seconds) == {"decode", "detect", "swap", "paste", "encode"}
    with av.open(str(tmp_path / "out.mp4")) as c, av.open(str(clip)) as src:
        record = json.loads(c.metadata["comment"])
        assert record["label"] == "visible" and record["synthetic"] == "true"
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        a_in = sum(p.size for p in src.demux(audio=0))
        a_out = sum(p.size for p in c.demux(audio=0))
        assert a_in == a_out > 0  # audio copied packet for packet
    before, after = _frames(clip), _frames(tmp_path / "out.mp4")
    assert len(after) == 60
    corner = (slice(None), slice(80, 96), slice(100, 160))
    assert (after[0][corner].float() - before[0][corner].float()).abs().mean() > 20  # the visible label
    body = (slice(None), slice(0, 70), slice(None))
    assert (after[2][body].float() - before[2][body].float()).abs().mean() < 3  # no face: unchanged (lossy)
    assert (after[20][body].float() - before[20][body].float()).abs().mean() < 3  # failed: unchanged
    assert (after[40][body].float() - before[40][body].float()).abs().mean() > 1  # swapped
    # every third frame detected; no label; nothing left behind but the outputs
    swapper.detector = FrameDetector(truth[::3])  # called on frames 0, 3, 6, ...
    report = swapper.swap_video(
        identity, clip, tmp_path / "plain.mp4", detect_every=3, label=False, progress=False
    )
    assert swapper.detector.calls == list(range(20)) and report.swapped == 54
    with av.open(str(tmp_path / "plain.mp4")) as c:
        assert json.loads(c.metadata["comment"])["label"] == "none (--no-label)"
    plain = _frames(tmp_path / "plain.mp4")
    assert (plain[0][corner].float() - before[0][corner].float()).abs().mean() < 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_landmark_smoothing_damps_jitter():
    from repsuite.faceswap.video import LandmarkSmoother

    g = torch.Generator().manual_seed(0)
    base = face_template(64) + 20
    smoother, raw, smooth = LandmarkSmoother(0.3), [], []
    for _ in range(40):
        marks = base + torch.randn(5, 2, generator=g)
        f = Faces(torch.tensor([[20.0, 20.0, 84.0, 84.0]]), torch.ones(1), marks[None])
        raw.append(marks)
        smooth.append(smoother(f).landmarks[0])
    jitter = lambda xs: torch.stack([b - a for a, b in itertools.pairwise(xs)]).norm(dim=-1).mean()  # noqa: E731
    assert jitter(smooth) < 0.5 * jitter(raw)
    far = Faces(torch.tensor([[200.0, 20.0, 264.0, 84.0]]), torch.ones(1), (base + 180)[None])
    assert torch.equal(smoother(far).landmarks, far.landmarks)  # a different face is not pulled back


def test_swap_command_on_a_video(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import av

    from tests.helpers.videos import write_face_clip

    clip, truth = write_face_clip(tmp_path / "clip.mp4", seconds=2, fps=6, no_face_frames=2)
    source = tmp_path / "me.png"
    Image.fromarray(_frames(clip)[5].permute(1, 2, 0).numpy()).save(source)
    monkeypatch.setattr(
        "repsuite.faceswap.swapper.load_retinaface", lambda path: FrameDetector([truth[5], *truth])
    )
    (tmp_path / "det.pth").write_bytes(b"")
    out = tmp_path / "out.mp4"
    args = ["faceswap", "swap", "--ckpt", tiny_ckpt, "--source", str(source), "--target", str(clip)]
    assert main([*args, "--detector", str(tmp_path / "det.pth"), "--no-label", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 frames, 10 swapped, 2 without a face" in printed and "frames/s" in printed
    with av.open(str(out)) as c:
        assert json.loads(c.metadata["comment"])["label"] == "none (--no-label)"


def test_bad_video_is_named_and_nothing_written(tiny_ckpt, scene, tmp_path):
    pixels, truth = scene
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=GivenFaces([truth]), device="cpu")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SwapError, match=r"broken\.mp4: cannot be opened as a video"):
        swapper.swap_video(pixels, bad, tmp_path / "out.mp4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]


@pytest.mark.slow
def test_video_benchmark_runs(tiny_ckpt, tmp_path):
    import subprocess

    from tests.conftest import PYTHON, ROOT, subprocess_env

    out = tmp_path / "video.json"
    cmd = [
        PYTHON,
        str(ROOT / "benchmarks/faceswap_video.py"),
        "--ckpt",
        tiny_ckpt,
        "--quick",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["frames"] == 25 and result["frames_per_second"] > 0
    assert set(result["seconds_by_stage"]) == {"decode", "detect", "swap", "paste", "encode"}


def test_save_pretrained_round_trip_with_the_detector(tiny_ckpt, scene, tmp_path):
    pixels, truth = scene
    state = {k: torch.randn(s) if s else torch.tensor(0) for k, s in _official_keys("mobilenet0.25").items()}
    state = {k: v.abs() if "running_var" in k else v for k, v in state.items()}
    torch.save(state, tmp_path / "mnet.pth")
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=tmp_path / "mnet.pth", device="cpu")
    out = tmp_path / "swapper"
    swapper.save_pretrained(out)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    again = FaceSwapper.from_pretrained(out, device="cpu")
    assert again.detector.net.cfg.body == "mobilenet0.25"
    for k, v in swapper.detector.net.state_dict().items():
        assert torch.equal(again.detector.net.state_dict()[k], v)
    swapper.detector = again.detector = GivenFaces([truth])
    assert torch.equal(
        again.swap(pixels, pixels, faces="all").image, swapper.swap(pixels, pixels, faces="all").image
    )
    with pytest.raises(SwapError, match="not a face swapper folder"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        FaceSwapper.from_pretrained(tmp_path / "empty")
