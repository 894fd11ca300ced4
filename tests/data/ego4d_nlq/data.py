#!/usr/bin/env python3
"""Write the tiny Ego4D NLQ download used by the tests (run from anywhere; output lands next to this file).

Same layout as the official ``ego4d`` download (annotations + one folder per feature source), made by
``repsuite.nlq.synthetic`` with small sizes so the committed files stay a few hundred KiB.
"""

import shutil
from pathlib import Path

from repsuite.nlq.synthetic import SyntheticSpec, write_synthetic_ego4d

HERE = Path(__file__).resolve().parent
SPEC = SyntheticSpec(
    num_videos={"train": 4, "val": 2, "test": 1},
    clips_per_video=1,
    clip_seconds=(30.0, 40.0),
    events_per_clip=3,
    queries_per_clip=2,
    sources={"slowfast8x8_r101_k400": 16, "clip_vitb16": 8},
    text_dim=8,
    seed=0,
)

if __name__ == "__main__":
    shutil.rmtree(HERE / "v2", ignore_errors=True)
    base = write_synthetic_ego4d(HERE, SPEC)
    size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    print(f"wrote {base} ({size / 1024:.0f} KiB)")
