"""Shared face-swap fixtures: a tiny synthetic download and a two-step swapper checkpoint (per session)."""

import pytest

from repsuite.cli import run_cli
from repsuite.faceswap.synthetic import SyntheticFacesSpec, write_synthetic_faces

TINY_MODEL = [
    "--model=FaceSwapModule",
    "--model.random_prior=true",
    "--model.train_prior=true",
    "--model.random_id_encoder=true",
    "--model.narrow=0.0625",
    "--model.num_mlp=2",
    "--model.component_width=8",
    "--model.r1_every=1",
    "--model.grid_size=2",
]


def _data(faces, **extra):
    args = [
        "--data=FaceSwapDataModule",
        f"--data.vggface2_root={faces / 'vggface2_hq'}",
        f"--data.ffhq_root={faces / 'ffhq'}",
        f"--data.val_pairs_root={faces / 'pairs'}",
        "--data.resolution=32",
        "--data.batch_size=2",
        "--data.eval_batch_size=2",
    ]
    return args + [f"--data.{k}={v}" for k, v in extra.items()]


TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    spec = SyntheticFacesSpec(
        resolution=32,
        identities=4,
        images_per_identity=3,
        ffhq_images=4,
        eval_identities=3,
        eval_pairs=4,
        judge_images=48,
        recon_images=0,
    )
    return write_synthetic_faces(root, spec)


@pytest.fixture(scope="session")
def tiny_ckpt(faces, tmp_path_factory):
    """A two-step swapper checkpoint for the tool tests."""
    root = tmp_path_factory.mktemp("tools_run")
    run_cli(["fit", *TINY_MODEL, *_data(faces), *TRAINER, "--trainer.max_steps=2",
             f"--trainer.default_root_dir={root}"])  # fmt: skip
    return str(next(root.glob("**/*.ckpt")))
