"""Challenge submissions: a prediction writer, the ``nlq submit`` argument list, score ensembling.

``repsuite predict --config CFG --ckpt_path CKPT --trainer.callbacks+=SubmissionWriter
--trainer.callbacks.output=PRED.json`` writes the official submission of ``data.predict_split`` (with an
extra ``scores`` list per entry, ignored by the official scorer); ``repsuite nlq submit CKPT`` builds exactly
that argument list from the data options saved in the checkpoint (:func:`submit_args`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from repsuite.nlq.evaluation import (
    CHALLENGE,
    SUBMISSION_VERSION,
    SubmissionError,
    evaluate_nlq,
    format_table,
    load_json,
    validate_submission,
)

__all__ = ["SubmissionWriter", "ensemble_submissions", "make_submission", "submit_args"]


def make_submission(results: list[dict]) -> dict[str, Any]:
    """The challenge's top-level object around a list of result entries."""
    return {"version": SUBMISSION_VERSION, "challenge": CHALLENGE, "results": results}


class SubmissionWriter(BasePredictionWriter):
    """Collects :meth:`NLQModule.predict_step` entries and writes them as one challenge submission.

    The file is validated (at most ``top_k`` windows of the model per entry, start <= end) before it is
    written. When the DataModule's predict split has ground truth (``Ego4DNLQDataModule`` with
    ``predict_split`` val or train), the official table is printed as well.

    Args:
        output: the submission file to write (``PRED.json``).
        evaluate: print the official scores when the predicted split has ground truth.
    """

    def __init__(self, output: str, evaluate: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.evaluate = evaluate
        self.entries: list[tuple[int, dict]] = []  # (dataset index, entry)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start empty: a writer object may serve several predict runs."""
        self.entries = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: list[dict],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep a batch's entries with their dataset indices (to restore file order across ranks)."""
        start = len(self.entries)
        indices = list(batch_indices) if batch_indices else range(start, start + len(prediction))
        self.entries.extend(zip(indices, prediction, strict=True))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Rank 0 writes the submission of every rank's entries, in dataset order, each query once."""
        results = self._gather(trainer)
        if trainer.global_rank != 0:
            return
        submission = make_submission(results)
        max_windows = getattr(pl_module.hparams, "top_k", None)
        validate_submission(
            submission, max_windows=max_windows, require_ordered=True, source=str(self.output)
        )
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(submission))
        datamodule = getattr(trainer, "datamodule", None)
        split = getattr(getattr(datamodule, "hparams", None), "predict_split", "predict")
        print(f"wrote {len(results)} predictions for split '{split}' to {self.output}")
        ground_truth = getattr(datamodule, "predict_ground_truth", lambda: None)()
        if self.evaluate and ground_truth is not None:
            result = evaluate_nlq(submission, load_json(ground_truth), source=str(self.output))
            print(f"Evaluated: {result.num_evaluated} / {result.num_gt_queries} instances (official)")
            print(format_table(result))

    def _gather(self, trainer: Trainer) -> list[dict]:
        """All ranks' entries sorted by dataset index; the distributed sampler's padding repeats dropped."""
        pairs = self.entries
        if trainer.world_size > 1:
            import torch.distributed as dist

            shards: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(shards, pairs)
            pairs = [pair for shard in shards for pair in shard]
        unique: dict[int, dict] = {}
        for index, entry in pairs:
            unique.setdefault(index, entry)
        return [unique[i] for i in sorted(unique)]


def submit_args(
    checkpoint: str, split: str, output: str, accelerator: str = "auto", overrides: Sequence[str] = ()
) -> list[str]:
    """The ``repsuite predict`` argument list of ``repsuite nlq submit``.

    The DataModule is the one saved in the checkpoint (its ``datamodule_hyper_parameters``), changed by
    ``overrides`` (``--data.<option>=<value>`` words, checked by the CLI's parser) and set to predict
    ``split``; the model's options come from the checkpoint (LightningCLI reads them with ``--ckpt_path``).
    """
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    data = {
        k: v for k, v in dict(ckpt.get("datamodule_hyper_parameters") or {}).items() if k != "_instantiator"
    }
    if not data:
        raise SubmissionError(
            f"{checkpoint}: no datamodule_hyper_parameters; was it trained with Ego4DNLQDataModule?"
        )
    data_config = {"class_path": data.pop("_class_path", "Ego4DNLQDataModule"), "init_args": data}
    writer = {"class_path": f"{__name__}.SubmissionWriter", "init_args": {"output": str(output)}}
    return [
        "predict",
        f"--ckpt_path={checkpoint}",
        "--model=NLQModule",
        f"--data={json.dumps(data_config)}",
        *overrides,
        f"--data.predict_split={split}",
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.callbacks=[{json.dumps(writer)}]",
    ]


def ensemble_submissions(
    submissions: Iterable[tuple[str, Mapping[str, Any]]], top_k: int = 5, deduplicate: bool = False
) -> dict[str, Any]:
    """Merge ranked windows of several submissions per query by score (thesis §2.5) and keep the top k.

    Args:
        submissions: ``(source name, submission object)`` pairs; every entry needs a ``scores`` list.
        top_k: windows kept per query.
        deduplicate: keep one copy of identical windows (the best-scored one).
    """
    pooled: dict[tuple, list[tuple[float, list[float]]]] = {}  # insertion order = first appearance
    for source, submission in submissions:
        for i, entry in enumerate(validate_submission(submission, source=source)):
            scores = entry.get("scores")
            if not isinstance(scores, list) or len(scores) != len(entry["predicted_times"]):
                raise SubmissionError(
                    f"{source}: results[{i}] has no `scores` list matching `predicted_times`; ensembling "
                    "needs the scores repsuite writes next to each window"
                )
            key = (entry["clip_uid"], entry["annotation_uid"], entry["query_idx"])
            pooled.setdefault(key, []).extend(zip(scores, entry["predicted_times"], strict=True))
    results = []
    for (clip_uid, annotation_uid, query_idx), candidates in pooled.items():
        ranked = sorted(candidates, key=lambda c: -c[0])
        if deduplicate:  # the first (best-ranked) copy of each window stays, in rank order
            first: dict[tuple, tuple[float, list[float]]] = {}
            for score, window in ranked:
                first.setdefault(tuple(window), (score, window))
            ranked = list(first.values())
        ranked = ranked[:top_k]
        results.append(
            {
                "clip_uid": clip_uid,
                "annotation_uid": annotation_uid,
                "query_idx": query_idx,
                "predicted_times": [w for _, w in ranked],
                "scores": [s for s, _ in ranked],
            }
        )
    return make_submission(results)
