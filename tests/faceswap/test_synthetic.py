"""Synthetic faces: real dataset layouts, identity/attribute separation and ground-truth swaps."""

import json

import torch
from PIL import Image

from repsuite.faceswap.synthetic import (
    SyntheticFacesSpec,
    render_face,
    sample_attributes,
    sample_identity,
    write_synthetic_faces,
)


def test_layouts_and_ground_truth(tmp_path):
    spec = SyntheticFacesSpec(
        resolution=32,
        identities=3,
        images_per_identity=2,
        ffhq_images=3,
        eval_identities=3,
        eval_pairs=4,
        judge_images=6,
        recon_images=6,
    )
    root = write_synthetic_faces(tmp_path, spec)
    folders = sorted(p.name for p in (root / "vggface2_hq").iterdir() if p.is_dir())
    assert folders == ["n000000", "n000001", "n000002", "n000003"]
    assert len(list((root / "vggface2_hq/n000003").glob("*.jpg"))) == 1  # the singleton identity
    assert sorted(p.name for p in (root / "ffhq/images1024x1024/00000").glob("*.png")) == [
        "00000.png", "00001.png", "00002.png"]  # fmt: skip
    lm = json.loads((root / "vggface2_hq/landmarks.json").read_text())
    assert len(lm) == 7 and len(lm["n000000/0000.jpg"]) == 5
    img = Image.open(root / "pairs/ground_truth/0000.png")
    assert img.size == (32, 32) and img.mode == "RGB"
    labels = json.loads((root / "pairs/identities.json").read_text())
    assert all(v["source_identity"] != v["target_identity"] for v in labels.values())
    # the judge's faces and the shape network's come from separate streams: no identity in common
    judge = json.loads((root / "judge/params.json").read_text())["images"]
    recon = json.loads((root / "recon/params.json").read_text())["images"]
    assert len(judge) == len(recon) == 6
    assert not {tuple(e["identity"]) for e in judge.values()} & {tuple(e["identity"]) for e in recon.values()}


def test_identity_and_attributes_are_separate_parameters():
    g = torch.Generator().manual_seed(0)
    a_id, b_id = sample_identity(g), sample_identity(g)
    attrs = sample_attributes(g)
    same_attr_a, lm_a = render_face(a_id, attrs, 64)
    same_attr_b, _ = render_face(b_id, attrs, 64)
    assert (same_attr_a - same_attr_b).abs().mean() > 0.02  # identity changes the face
    # background pixels (the corners) come from the attributes only
    torch.testing.assert_close(same_attr_a[:, :3, :3], same_attr_b[:, :3, :3])
    again, _ = render_face(a_id, attrs, 64)
    torch.testing.assert_close(again, same_attr_a)
    assert lm_a.shape == (5, 2) and (lm_a[:, 1] > 20).all()
