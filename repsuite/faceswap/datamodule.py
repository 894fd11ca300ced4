"""DataModules: face swapping (``FaceSwapDataModule``) and ArcFace training (``FaceIdentityDataModule``)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from repsuite.faceswap.data import (
    FaceImage,
    FaceImageError,
    FacePairDataset,
    JudgeFaceDataset,
    PairFolderDataset,
    check_images,
    read_face,
    read_judge_params,
    scan_ffhq,
    scan_vggface2,
)

__all__ = ["FaceIdentityDataModule", "FaceJudgeDataModule", "FaceReconDataModule", "FaceSwapDataModule"]


def _collate(items: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class _FaceDataModule(LightningDataModule):
    """What the face DataModules share: a cheap ``__str__`` and loaders over ``train_set`` / ``val_set``."""

    train_set: Dataset | None = None
    val_set: Dataset | None = None

    @property
    def resolution(self) -> int:
        """Face size in pixels; the CLI links it to the model's ``resolution`` (given once, here)."""
        return self.hparams.resolution

    def __str__(self) -> str:
        # LightningDataModule.__str__ builds every dataloader; jsonargparse calls str() while linking
        # arguments, which would parse (and skip) data before prepare_data has run
        return f"{type(self).__name__}({dict(self.hparams)})"

    def train_dataloader(self) -> DataLoader:
        """Shuffled training samples (a last partial batch is dropped when there is more than one batch)."""
        h = self.hparams
        return DataLoader(
            self.train_set, batch_size=h.batch_size, shuffle=True, num_workers=h.num_workers,
            collate_fn=_collate, drop_last=len(self.train_set) > h.batch_size,
            persistent_workers=h.num_workers > 0,
        )  # fmt: skip

    def _eval_loader(self) -> DataLoader:
        h = self.hparams
        return DataLoader(
            self.val_set, batch_size=h.eval_batch_size, num_workers=h.num_workers, collate_fn=_collate
        )

    def val_dataloader(self) -> DataLoader:
        """The validation samples, in order."""
        return self._eval_loader()


class FaceSwapDataModule(_FaceDataModule):
    """Training pairs from VGGFace2-HQ and/or FFHQ folders, validation pairs from a pair folder or held out.

    Args:
        vggface2_root: VGGFace2-HQ-style folder (one sub-folder per identity), or None.
        ffhq_root: FFHQ-style folder (images at any depth, no identities), or None.
        resolution: face size fed to the model (the StyleGAN2 prior's: 512 in the thesis).
        same_identity_ratio: fraction of same-identity (reconstruction) pairs; SimSwap alternates (0.5).
        val_pairs_root: folder with ``source/``, ``target/`` (and ``ground_truth/``) for validation; without
            it, ``val_pairs`` cross-identity pairs are drawn once (seed 0) from held-out VGGFace2 identities.
        val_pairs: held-out pairs when ``val_pairs_root`` is None.
        augment_source: colour jitter and a small affine jitter on the sources, on the accelerator (kornia),
            so an image paired with itself still differs from its target.
        verify_images: check every file's header at setup (unreadable / non-RGB / non-square are skipped,
            counted and logged).
        batch_size: training batch size.
        eval_batch_size: validation / test / predict batch size.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        vggface2_root: str | None = None,
        ffhq_root: str | None = None,
        resolution: int = 512,
        same_identity_ratio: float = 0.5,
        val_pairs_root: str | None = None,
        val_pairs: int = 16,
        augment_source: bool = True,
        verify_images: bool = True,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if vggface2_root is None and ffhq_root is None:
            raise ValueError("FaceSwapDataModule: give vggface2_root, ffhq_root or both")
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.skipped: Counter = Counter()
        self._augment = None

    def _images(self) -> tuple[list[FaceImage], list[FaceImage]]:
        """(training images, held-out VGGFace2 images for validation pairs)."""
        h = self.hparams
        train, held = [], []
        if h.vggface2_root:
            faces = scan_vggface2(h.vggface2_root)
            ids = sorted({f.identity for f in faces})
            n_held = 0 if h.val_pairs_root else max(2, len(ids) // 8) if len(ids) >= 4 else 0
            held_ids = set(ids[-n_held:]) if n_held else set()
            train += [f for f in faces if f.identity not in held_ids]
            held += [f for f in faces if f.identity in held_ids]
        if h.ffhq_root:
            train += scan_ffhq(h.ffhq_root)
        if h.verify_images:
            train, bad = check_images(train)
            held, bad_held = check_images(held)
            self.skipped = bad + bad_held
            if self.skipped:
                rank_zero_info(
                    f"[FaceSwapDataModule] skipped {dict(self.skipped)} image(s) (paths in the log)"
                )
        return train, held

    def setup(self, stage: str) -> None:
        """Index the folders (once)."""
        if self.train_set is not None:
            return
        h = self.hparams
        train, held = self._images()
        self.train_set = FacePairDataset(train, h.resolution, h.same_identity_ratio)
        singles = sum(1 for v in self.train_set.by_identity.values() if len(v) == 1)
        rank_zero_info(
            f"[FaceSwapDataModule] {len(train)} training faces ({len(self.train_set.by_identity)} "
            "identities, "
            f"{singles} with a single image: their same-identity pairs reuse the image)"
        )
        if h.val_pairs_root:
            self.val_set = PairFolderDataset(h.val_pairs_root, h.resolution)
        else:
            self.val_set = HeldOutPairs(held or train, h.resolution, h.val_pairs)

    def test_dataloader(self) -> DataLoader:
        """Same pairs as validation."""
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        """Same pairs as validation."""
        return self._eval_loader()

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Augment the training sources on the accelerator (kornia)."""
        if not (self.hparams.augment_source and self.trainer is not None and self.trainer.training):
            return batch
        if self._augment is None:
            import kornia.augmentation as K

            self._augment = torch.nn.Sequential(
                K.ColorJitter(0.15, 0.15, 0.15, 0.02, p=0.8),
                K.RandomAffine(
                    degrees=4.0, translate=(0.03, 0.03), scale=(0.96, 1.04), p=0.5, padding_mode="border"
                ),
            ).to(batch["source"].device)
        src = (batch["source"] + 1) / 2
        batch["source"] = self._augment(src.float()).to(batch["source"].dtype) * 2 - 1
        return batch


class HeldOutPairs(Dataset):
    """A fixed list of cross-identity (source, target) pairs drawn once from ``images`` (seed 0)."""

    def __init__(self, images: list[FaceImage], resolution: int, count: int) -> None:
        rng = random.Random(0)
        self.images, self.resolution = images, resolution
        self.pairs = []
        for _ in range(count):
            a = rng.randrange(len(images))
            choices = [j for j, f in enumerate(images) if f.identity != images[a].identity or f.identity < 0]
            b = rng.choice([j for j in choices if j != a] or [a])
            self.pairs.append((a, b))
        ids = sorted({f.identity for f in images})
        self.identity_index = {k: i for i, k in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        a, b = self.pairs[index]
        src, tgt = self.images[a], self.images[b]
        return {
            "name": f"pair{index:04d}",
            "source": read_face(src.path, self.resolution)[0],
            "target": read_face(tgt.path, self.resolution)[0],
            "source_identity": src.identity,
            "target_identity": tgt.identity,
        }


class IdentityFaces(Dataset):
    """(face, identity label) samples of VGGFace2-HQ-style folders, labels 0..num_classes−1."""

    def __init__(self, images: list[FaceImage], resolution: int, labels: dict[int, int]) -> None:
        self.images, self.resolution, self.labels = images, resolution, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        face = self.images[index]
        return {"image": read_face(face.path, self.resolution)[0], "label": self.labels[face.identity]}


class FaceIdentityDataModule(_FaceDataModule):
    """Identity folders for training an ArcFace encoder (for users without official weights).

    Every identity with at least two images contributes one image to validation (closed-set accuracy);
    single-image identities only train.

    Args:
        vggface2_root: VGGFace2-HQ-style folder (one sub-folder per identity).
        resolution: size the aligned faces are read at (they are cropped to ArcFace's 112×112 by the model).
        batch_size: training batch size.
        eval_batch_size: validation batch size.
        num_workers: DataLoader workers.
        verify_images: skip (count, log) unreadable / non-RGB / non-square files at setup.
    """

    def __init__(
        self,
        vggface2_root: str,
        resolution: int = 128,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        verify_images: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        root = Path(vggface2_root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root}: VGGFace2-HQ folder not found (expected one sub-folder per identity)"
            )
        # one class per identity folder (the label is the folder's index in sorted order), known before setup
        # so the CLI can link it to the model's margin head
        self.num_classes = sum(1 for p in root.iterdir() if p.is_dir())

    def setup(self, stage: str) -> None:
        """Per identity: the first image validates (when there are two or more), the rest train."""
        if self.train_set is not None:
            return
        h = self.hparams
        faces = scan_vggface2(h.vggface2_root)
        if h.verify_images:
            faces, bad = check_images(faces)
            if bad:
                rank_zero_info(f"[FaceIdentityDataModule] skipped {dict(bad)} image(s) (paths in the log)")
        if len({f.identity for f in faces}) < 2:
            raise FaceImageError(
                f"{h.vggface2_root}: need at least two identities to train an identity encoder"
            )
        labels = {k: k for k in range(self.num_classes)}
        by_id: dict[int, list[FaceImage]] = {}
        for f in faces:
            by_id.setdefault(f.identity, []).append(f)
        train, val = [], []
        for group in by_id.values():
            if len(group) >= 2:
                val.append(group[0])
                train += group[1:]
            else:
                train += group
        self.train_set = IdentityFaces(train, h.resolution, labels)
        self.val_set = IdentityFaces(val, h.resolution, labels)


class _ParamsFaceDataModule(_FaceDataModule):
    """Faces with known rendering parameters (``params.json``): the last ``val_fraction`` validate."""

    _meta: dict

    def _read(self, root: str) -> None:
        self._root = root
        self._meta = read_judge_params(root)
        self.train_set: JudgeFaceDataset | None = None
        self.val_set: JudgeFaceDataset | None = None

    @property
    def fields(self) -> tuple[list[str], list[str]]:
        """Names of the identity and attribute parameters, as ``params.json`` lists them."""
        return list(self._meta["identity_fields"]), list(self._meta["attribute_fields"])

    def setup(self, stage: str) -> None:
        """Split the sorted image list into train / val."""
        if self.train_set is not None:
            return
        h = self.hparams
        names = sorted(self._meta["images"])
        n_val = max(1, round(len(names) * h.val_fraction)) if len(names) > 1 else 0
        split = len(names) - n_val
        self.train_set = JudgeFaceDataset(self._root, h.resolution, names[:split], self._meta)
        self.val_set = JudgeFaceDataset(self._root, h.resolution, names[split:], self._meta)

    def train_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Identity (N, identity_dim) and attribute (N, attribute_dim) vectors of the training images."""
        entries = self.train_set.entries
        ident = torch.tensor([entries[n]["identity"] for n in self.train_set.names], dtype=torch.float32)
        attrs = torch.tensor([entries[n]["attributes"] for n in self.train_set.names], dtype=torch.float32)
        return ident, attrs


class FaceJudgeDataModule(_ParamsFaceDataModule):
    """Faces with known rendering parameters (synthetic ``ROOT/judge/``) for an independent judge.

    The last ``val_fraction`` of the sorted images validate. ``identity_dim`` / ``attribute_dim`` are read
    from ``params.json`` at construction, so the CLI links them into the judge's constructor.

    Args:
        judge_root: folder with ``params.json`` (``repsuite faceswap synth`` writes ``ROOT/judge``).
        resolution: size the faces are read at.
        val_fraction: share of the images held out for validation.
        batch_size: training batch size.
        eval_batch_size: validation batch size.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        judge_root: str,
        resolution: int = 64,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._read(judge_root)
        self.identity_dim = len(self._meta["identity_fields"])
        self.attribute_dim = len(self._meta["attribute_fields"])


class FaceReconDataModule(_ParamsFaceDataModule):
    """Faces with known rendering parameters (synthetic ``ROOT/recon/``) for the face-reconstruction network.

    The same ``params.json`` layout as the judge's faces, from a folder of its own: the shape network the
    swapper trains against and the judge that scores it learn from different identities.

    Args:
        recon_root: folder with ``params.json`` (``repsuite faceswap synth`` writes ``ROOT/recon``).
        resolution: size the faces are read at.
        val_fraction: share of the images held out for validation.
        batch_size: training batch size.
        eval_batch_size: validation batch size.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        recon_root: str,
        resolution: int = 64,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._read(recon_root)
