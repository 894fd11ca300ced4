"""Face swapping with a StyleGAN2 generative prior (thesis chapter 3).

Models (plain ``nn.Module``): :class:`StyleGAN2Generator` / :class:`StyleGAN2Discriminator` (GFPGAN /
BasicSR key layouts), :class:`IResNet` (ArcFace), :class:`FaceSwapGenerator` (Fig. 3.7). Lightning:
:class:`FaceSwapModule`, :class:`IdentityModule`, :class:`FaceJudgeModule`, :class:`FaceReconModule`,
:class:`FaceSwapDataModule`, :class:`FaceIdentityDataModule`, :class:`FaceJudgeDataModule`,
:class:`FaceReconDataModule`. Shape-aware identity (HifiFace): :class:`FaceRecon`. Evaluation over a
pair folder: :func:`evaluate_swaps`, judged independently by :class:`FaceJudge` (synthetic faces) or a
second ArcFace.
"""

from repsuite.faceswap.arcface import ArcMarginHead, IResNet, iresnet, load_arcface
from repsuite.faceswap.datamodule import (
    FaceIdentityDataModule,
    FaceJudgeDataModule,
    FaceReconDataModule,
    FaceSwapDataModule,
)
from repsuite.faceswap.detection import (
    AlignedFaces,
    FaceDetector,
    Faces,
    GivenFaces,
    RetinaFaceDetector,
    load_retinaface,
)
from repsuite.faceswap.evaluation import evaluate_swaps, swap_grid_pairs
from repsuite.faceswap.idnet import IdentityModule
from repsuite.faceswap.judge import FaceJudge, FaceJudgeConfig, load_judge
from repsuite.faceswap.judge_module import FaceJudgeModule
from repsuite.faceswap.judging import SwapJudge, open_judge
from repsuite.faceswap.loading import infer_stylegan2_config, load_stylegan2, load_stylegan2_discriminator
from repsuite.faceswap.model import FaceSwapGenerator, FaceSwapGeneratorConfig
from repsuite.faceswap.module import FaceSwapModule
from repsuite.faceswap.recon import FaceRecon, FaceReconConfig, load_face_recon
from repsuite.faceswap.recon_module import FaceReconModule
from repsuite.faceswap.stylegan2 import (
    StyleGAN2Config,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    apply_cs_sft,
    stylegan2_channels,
)
from repsuite.faceswap.swapper import FaceSwapper, Identity, SwapResult

__all__ = [
    "AlignedFaces",
    "ArcMarginHead",
    "FaceDetector",
    "FaceIdentityDataModule",
    "FaceJudge",
    "FaceJudgeConfig",
    "FaceJudgeDataModule",
    "FaceJudgeModule",
    "FaceRecon",
    "FaceReconConfig",
    "FaceReconDataModule",
    "FaceReconModule",
    "FaceSwapDataModule",
    "FaceSwapGenerator",
    "FaceSwapGeneratorConfig",
    "FaceSwapModule",
    "FaceSwapper",
    "Faces",
    "GivenFaces",
    "IResNet",
    "Identity",
    "IdentityModule",
    "RetinaFaceDetector",
    "StyleGAN2Config",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "SwapJudge",
    "SwapResult",
    "apply_cs_sft",
    "evaluate_swaps",
    "infer_stylegan2_config",
    "iresnet",
    "load_arcface",
    "load_face_recon",
    "load_judge",
    "load_retinaface",
    "load_stylegan2",
    "load_stylegan2_discriminator",
    "open_judge",
    "stylegan2_channels",
    "swap_grid_pairs",
]
