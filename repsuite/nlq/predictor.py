"""``NLQPredictor``: a trained NLQ checkpoint answering questions about a clip, in two lines.

    predictor = NLQPredictor.from_checkpoint("outputs/nlq/checkpoints/last.ckpt")
    answer = predictor.query("kitchen.mp4", "where did I put the keys?")

The checkpoint alone restores the network and the data settings it was trained with (feature sources and
their widths, pooling to ``max_video_len``, temporal positions, text mode) and, from the manifests its
DataModule recorded (:meth:`Ego4DNLQDataModule.provenance`), how those inputs were made: a frame-feature
folder written by ``repsuite nlq extract-video`` (open_clip or timm) is made again from a video file, a text
folder written by ``extract-text`` (or the ``text="clip"`` cache) from a question. Inputs go through the
dataset's own helpers and :meth:`NLQModule.predict_windows`, so the windows and scores are the ones
``repsuite nlq submit`` writes for the same clip and question (tested).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin
from torch import Tensor

from repsuite.checkpoints import CheckpointError, read_pretrained, recorded_weights, write_pretrained
from repsuite.errors import InputError
from repsuite.nlq.data import NLQSample, collate_nlq, question_tokens, text_feature_input, video_bins
from repsuite.nlq.decoding import ranked_windows
from repsuite.nlq.features import ROWS_PER_SEC, clip_row_range, concat_sources, load_feature_file
from repsuite.nlq.model import NLQModel, NLQModelConfig
from repsuite.nlq.module import MODEL_CONFIG_KEY, NLQModule

__all__ = ["Moment", "NLQAnswer", "NLQPredictor", "PredictorError"]

#: ``format`` of the config.json :meth:`NLQPredictor.save_pretrained` writes.
PRETRAINED_FORMAT = "repsuite-nlq-predictor/1"

#: Lightning stores a DataModule's ``state_dict()`` under its class name.
DATA_STATE_KEY = "Ego4DNLQDataModule"
FEATURE_SUFFIXES = (".pt", ".pth")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

VideoInput = Tensor | str | Path | Mapping[str, Tensor | str | Path]


class PredictorError(InputError):
    """An input the predictor cannot use; the message names the file or argument and what was expected."""


@dataclass(frozen=True)
class Moment:
    """One answer window in seconds from the start of the clip, with its score (joint probability)."""

    start: float
    end: float
    score: float


@dataclass(frozen=True)
class NLQAnswer:
    """The ranked windows of one question, best first."""

    question: str
    moments: tuple[Moment, ...]

    @property
    def windows(self) -> list[list[float]]:
        """``[[start, end], ...]`` in seconds: a submission entry's ``predicted_times``."""
        return [[m.start, m.end] for m in self.moments]

    @property
    def scores(self) -> list[float]:
        """The windows' scores: a submission entry's ``scores``."""
        return [m.score for m in self.moments]

    def __str__(self) -> str:
        lines = [f"question: {self.question}"]
        lines += [
            f"  {i}. {m.start:8.2f} – {m.end:8.2f} s   score {m.score:.4f}"
            for i, m in enumerate(self.moments, 1)
        ]
        return "\n".join(lines)


def _load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PredictorError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or objects a weights-only load refuses
        raise PredictorError(f"{path}: cannot be read as a weights-only torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or MODEL_CONFIG_KEY not in ckpt or "state_dict" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PredictorError(
            f"{path}: not an NLQModule checkpoint (expected a Lightning checkpoint with `state_dict` and "
            f"`{MODEL_CONFIG_KEY}` entries; found {found})"
        )
    if not ckpt.get("datamodule_hyper_parameters"):
        raise PredictorError(
            f"{path}: no `datamodule_hyper_parameters`; the predictor needs the data settings of a model "
            "trained with Ego4DNLQDataModule"
        )
    return ckpt


def _build_module(
    hparams: Mapping[str, Any], network: Mapping[str, Any], state: Mapping[str, Tensor]
) -> NLQModule:
    """An :class:`NLQModule` with its network built from NLQModelConfig fields and its weights loaded."""
    module = NLQModule(**dict(hparams) | {"video_dim": None, "text_dim": None})
    module.model = NLQModel(NLQModelConfig(**network))
    module.load_state_dict(state)
    return module


class NLQPredictor(ModelHubMixin, library_name="repsuite", tags=["ego4d", "natural-language-queries"]):
    """A trained NLQ model with the input pipeline it was trained with. Build it with :meth:`from_checkpoint`.

    ``save_pretrained(DIR)`` / ``NLQPredictor.from_pretrained(DIR)`` share it in the Hugging Face hub layout
    (``config.json`` with the model's and the data's settings, ``model.safetensors``, a model card);
    ``from_pretrained`` reads a local directory only.

    Args:
        module: the restored :class:`NLQModule` (network built, weights loaded).
        data: the DataModule's hyper-parameters saved in the checkpoint.
        provenance: the DataModule's :meth:`~Ego4DNLQDataModule.provenance` saved in the checkpoint (None for
            checkpoints that predate it: feature inputs still work, video files and CLIP text do not).
        device: where the model (and any frame or text encoder) runs.
        precision: ``None``/``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"`` (autocast).
        weights: local weights files by component, overriding the paths recorded in the manifests:
            a feature source's name for its frame encoder, ``"text"`` for the text tower.
        source: the checkpoint file, for messages.
    """

    def __init__(
        self,
        module: NLQModule,
        data: Mapping[str, Any],
        provenance: Mapping[str, Any] | None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        weights: Mapping[str, str] | None = None,
        source: str = "checkpoint",
    ) -> None:
        if precision not in (None, "32-true", "32", *AUTOCAST):
            raise PredictorError(
                f"precision {precision!r}: expected None, '32-true', 'bf16-mixed' or '16-mixed'"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.data = dict(data)
        self.provenance = dict(provenance or {})
        self.precision = precision
        self.weights = dict(weights or {})
        self.source = source
        self.sources: list[dict[str, Any]] = list(self.provenance.get("sources") or [])
        if not self.sources:  # an older checkpoint: names only, widths read from the inputs
            names = self.data.get("features") or ["slowfast8x8_r101_k400"]
            self.sources = [{"name": n, "dim": None, "manifest": None} for n in names]
        self._encoders: dict[str, Any] = {}
        self._text_tower: Any = None
        self._videos: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()  # encoded video files

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        weights: Mapping[str, str] | None = None,
    ) -> NLQPredictor:
        """Restore model and data settings from a Lightning checkpoint of :class:`NLQModule` (weights only).

        Raises:
            PredictorError: the file is missing, unreadable, or not an NLQModule checkpoint.
        """
        state = _load_checkpoint(ckpt)
        hparams = {
            k: v for k, v in dict(state.get("hyper_parameters") or {}).items() if not k.startswith("_")
        }
        module = _build_module(hparams, state[MODEL_CONFIG_KEY], state["state_dict"])
        provenance = dict(state.get(DATA_STATE_KEY) or {}).get("provenance")
        return cls(
            module, state["datamodule_hyper_parameters"], provenance, device, precision, weights, str(ckpt)
        )

    # ----------------------------------------------------------------------------------------- sharing
    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json (module hyper-parameters, network config, data settings, input records) + weights."""
        from dataclasses import asdict

        module = self.module
        config = {
            "format": PRETRAINED_FORMAT,
            "module_hparams": {k: v for k, v in dict(module.hparams).items() if not k.startswith("_")},
            "network": asdict(module.model.cfg),
            "datamodule": {k: v for k, v in self.data.items() if not k.startswith("_")},
            "input_provenance": self.provenance,
        }
        write_pretrained(save_directory, config, module.state_dict())

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        directory: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        weights: Mapping[str, str] | None = None,
    ) -> NLQPredictor:
        """A predictor from a folder written by :meth:`save_pretrained` (local only: nothing is downloaded).

        Raises:
            PredictorError: not a directory, or not one a repsuite NLQ predictor wrote.
        """
        path = Path(directory)
        if not path.is_dir():
            raise PredictorError(f"{path}: not a directory (from_pretrained reads a save_pretrained folder)")
        return super().from_pretrained(
            path, local_files_only=True, device=device, precision=precision, weights=weights
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        config: dict | None = None,
        device: Any = None,
        precision: str | None = None,
        weights: Any = None,
        **_: Any,
    ) -> NLQPredictor:
        path = Path(model_id)
        state = read_pretrained(path, config, PRETRAINED_FORMAT, "an NLQ predictor", PredictorError)
        module = _build_module(config["module_hparams"], config["network"], state)
        return cls(
            module, config["datamodule"], config["input_provenance"], device, precision, weights, str(path)
        )

    # ----------------------------------------------------------------------------------------- inputs
    @property
    def source_names(self) -> list[str]:
        """The model's feature sources, in the order their rows are concatenated."""
        return [s["name"] for s in self.sources]

    def video_rows(self, video: VideoInput, clip: tuple[float, float] | None = None) -> Tensor:
        """The clip's feature rows (n, ΣD) as the model reads them: each source L2-normalised, concatenated.

        Args:
            video: a (rows, ΣD) tensor or features file (one source, or all sources concatenated in order),
                a ``{source name: tensor or file}`` mapping, or a video file when every source can be made
                by ``extract-video`` (encoded once, then cached).
            clip: ``(start, end)`` seconds of the video to answer in; the whole input when None.
        """
        if isinstance(video, Mapping):
            missing = [n for n in self.source_names if n not in video]
            extra = [n for n in video if n not in self.source_names]
            if missing or extra:
                raise PredictorError(
                    f"video features: expected sources {self.source_names}, got {list(video)} "
                    f"(missing {missing}, unknown {extra})"
                )
            parts = {n: self._as_rows(video[n], n) for n in self.source_names}
        elif isinstance(video, Tensor):
            parts = self._split(video, "video tensor")
        else:
            path = Path(video)
            if not path.exists():
                raise PredictorError(f"{path}: not found")
            if path.suffix in FEATURE_SUFFIXES:
                parts = self._split(load_feature_file(path), str(path))
            else:
                parts = self._encode_video(path)
        if clip is not None:
            parts = {n: t[slice(*clip_row_range(clip[0], clip[1], t.shape[0]))] for n, t in parts.items()}
        where = f"clip {clip} of {video if not isinstance(video, Tensor) else 'the tensor'}"
        return concat_sources(list(parts.items()), where=where)  # (n, ΣD)

    def _as_rows(self, value: Tensor | str | Path, name: str) -> Tensor:
        rows = value if isinstance(value, Tensor) else load_feature_file(Path(value))
        where = f"source {name!r}" if isinstance(value, Tensor) else str(value)
        dim = next(s["dim"] for s in self.sources if s["name"] == name)
        if rows.ndim != 2 or (dim is not None and rows.shape[1] != dim):
            raise PredictorError(
                f"{where}: expected (rows, {dim or 'D'}) features of source {name!r}, got {tuple(rows.shape)}"
            )
        if not torch.isfinite(rows).all():
            raise PredictorError(f"{where}: features hold NaN or infinite values")
        return rows.float()

    def _split(self, rows: Tensor, where: str) -> dict[str, Tensor]:
        """One source's rows, or all sources' rows concatenated in order, cut into per-source parts."""
        if len(self.sources) == 1:
            return {self.source_names[0]: self._as_rows(rows, self.source_names[0])}
        dims = [s["dim"] for s in self.sources]
        if None in dims or rows.ndim != 2 or rows.shape[1] != sum(dims):
            raise PredictorError(
                f"{where}: this model reads {len(dims)} feature sources {self.source_names} (widths {dims}); "
                f"pass their rows concatenated in that order (rows, {sum(d or 0 for d in dims)}) or a "
                f"{{source name: features}} mapping; got shape {tuple(rows.shape)}"
            )
        chunks = rows.split(dims, dim=1)
        return {n: self._as_rows(c, n) for n, c in zip(self.source_names, chunks, strict=True)}

    def video_file_support(self) -> str | None:
        """None when :meth:`query` takes video files; otherwise why not (names the source that cannot)."""
        for source in self.sources:
            why = self._not_encodable(source)
            if why:
                return f"feature source {source['name']!r} cannot be made from a video file: {why}"
        return None

    def _not_encodable(self, source: Mapping[str, Any]) -> str:
        if not self.provenance:
            return "the checkpoint predates repsuite's input records (retrain, or pass feature files)"
        if (source.get("manifest") or {}).get("encoder") is None:
            return (
                "its folder had no extract-video manifest when the model was trained (e.g. Ego4D's "
                "SlowFast/Omnivore features, made by Ego4D's own extractor)"
            )
        return ""

    def _encoder(self, source: Mapping[str, Any]) -> Any:
        """The frame encoder that made a source's features (built once), or an error saying why not."""
        from repsuite.nlq.extract.frame_encoder import FrameEncoder

        name = source["name"]
        if name not in self._encoders:
            why = self._not_encodable(source)
            if why:
                raise PredictorError(
                    f"{self.source}: feature source {name!r} cannot be made from a video file: "
                    f"{why}; pass its features instead"
                )
            record = source["manifest"]["encoder"]
            try:
                encoder = FrameEncoder.from_record(record, self.weights.get(name))
            except (ValueError, FileNotFoundError) as err:
                raise PredictorError(
                    f"feature source {name!r}: {err} (pass weights={{{name!r}: PATH}})"
                ) from err
            self._encoders[name] = encoder.to(self.device)
        return self._encoders[name]

    def _encode_video(self, path: Path) -> dict[str, Tensor]:
        """Every source's rows of a video file (made once per file and kept for the next calls)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in self._videos:
            self._videos.move_to_end(key)
            return self._videos[key]
        encoders = {s["name"]: self._encoder(s) for s in self.sources}  # all checked before decoding
        parts = {}
        for s in self.sources:
            manifest = s["manifest"]
            sampling = manifest.get("sampling") or {}
            rows = encoders[s["name"]].encode_video(
                path, sampling.get("rule", "center"), int(sampling.get("seed", 0)), key=path.stem
            )
            parts[s["name"]] = rows.to(getattr(torch, manifest.get("dtype", "float32"))).float()  # as stored
        self._videos[key] = parts
        if len(self._videos) > 4:
            self._videos.popitem(last=False)
        return parts

    def encode_questions(self, questions: Sequence[str | Tensor]) -> list[Tensor]:
        """The model's text input per question: token ids (L,) or token features (L, Dt).

        Token features may also be given directly as (L, Dt) tensors (models trained on precomputed
        text features whose maker is unknown take only those).
        """
        mode = self.data.get("text", "tokens")
        out: list[Tensor | None] = [None] * len(questions)
        strings = [(i, q) for i, q in enumerate(questions) if isinstance(q, str)]
        for i, q in enumerate(questions):
            if isinstance(q, Tensor):
                if mode == "tokens" or q.ndim != 2:
                    raise PredictorError(
                        f"question {i}: a tensor must be (L, Dt) token features of a model "
                        f"trained on text features; this model's text mode is {mode!r}"
                    )
                out[i] = text_feature_input(q)
        if strings and mode == "tokens":
            for i, q in strings:
                out[i] = question_tokens(q)
        elif strings:
            states = self._tower()([q for _, q in strings])  # list of (L, Dt)
            for (i, _), t in zip(strings, states, strict=True):
                out[i] = text_feature_input(t)
        return out  # type: ignore[return-value]

    def _tower(self) -> Any:
        """The frozen CLIP text tower that made the training text features (built once)."""
        from repsuite.nlq.clip_text import ClipTextTower, register_clip_config

        if self._text_tower is not None:
            return self._text_tower
        manifest = (self.provenance.get("text") or {}).get("manifest")
        if manifest is None and self.data.get("text") == "clip":
            manifest = {"model": self.data["clip_model"], "checkpoint": self.data.get("clip_checkpoint")}
        if manifest is None:
            raise PredictorError(
                f"{self.source}: the model was trained on precomputed text features "
                f"({self.data.get('text_features')}) with no manifest naming the text encoder that made "
                "them; "
                "pass each question's (L, Dt) token features instead of its string"
            )
        what = f"text encoder {manifest.get('model')!r}"
        try:
            path = recorded_weights(self.weights.get("text") or manifest.get("checkpoint"),
                                    manifest.get("checkpoint_sha256"), what)  # fmt: skip
        except CheckpointError as err:
            raise PredictorError(f"{err} (pass weights={{'text': PATH}})") from err
        model = register_clip_config(manifest["model"], manifest.get("model_config"))
        self._text_tower = ClipTextTower(model, str(path)).to(self.device)
        return self._text_tower

    # ----------------------------------------------------------------------------------------- query
    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST.get(self.precision or "")
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def query(
        self,
        video: VideoInput,
        questions: str | Tensor | Sequence[str | Tensor],
        top_k: int = 5,
        clip: tuple[float, float] | None = None,
        batch_size: int = 64,
    ) -> NLQAnswer | list[NLQAnswer]:
        """Ranked windows answering each question about ``video`` (see :meth:`video_rows` for its forms).

        The video is read (or encoded) once per call; the questions run through the model in batches of
        ``batch_size``. Windows are in seconds from the start of the clip (``clip[0]`` of the video when
        ``clip`` is given), at most ``top_k`` per question.

        Returns:
            one :class:`NLQAnswer` for a single question, else a list in the questions' order.
        """
        single = isinstance(questions, (str, Tensor))
        items = [questions] if single else list(questions)
        if not items:
            raise PredictorError("questions: expected at least one question")
        rows = self.video_rows(video, clip)  # (n, ΣD)
        bins = video_bins(rows, self.data.get("max_video_len", 600), bool(self.data.get("temporal_position")))
        duration = rows.shape[0] / ROWS_PER_SEC
        texts = self.encode_questions(items)
        answers: list[NLQAnswer] = []
        for first in range(0, len(items), batch_size):
            chunk = range(first, min(first + batch_size, len(items)))
            samples = [NLQSample(bins, texts[i], -1, -1, (0.0, 0.0), duration, i, ("", "", i)) for i in chunk]
            batch = {
                k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in collate_nlq(samples).items()
            }
            with torch.inference_mode(), self._autocast():
                windows, scores = self.module.predict_windows(batch, top_k=top_k)  # (b, k, 2), (b, k)
            for i, w, s in zip(chunk, windows.tolist(), scores.tolist(), strict=True):
                kept, kept_scores = ranked_windows(w, s)
                text = items[i] if isinstance(items[i], str) else f"<token features {tuple(items[i].shape)}>"
                moments = tuple(Moment(a, b, c) for (a, b), c in zip(kept, kept_scores, strict=True))
                answers.append(NLQAnswer(text, moments))
        return answers[0] if single else answers
