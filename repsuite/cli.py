"""The ``repsuite`` command: LightningCLI for fit/validate/test/predict plus task tools.

``repsuite fit --config configs/...yaml`` runs the Lightning Trainer on a model and a DataModule given by
class name (subclass mode, so a config says ``class_path: NLQModule``). Other first words are task tools
registered in :data:`TOOLS` (``repsuite env``; the tasks add ``repsuite nlq ...`` and friends): each is a
``main(argv) -> int`` function, imported only when its word is given.
"""

from __future__ import annotations

import importlib
import netrc
import os
import sys
from typing import Any
from urllib.parse import urlparse

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from repsuite._version import __version__

__all__ = [
    "TASK_PACKAGES",
    "TOOLS",
    "RepsuiteCLI",
    "RepsuiteSaveConfigCallback",
    "main",
    "run_cli",
    "wandb_has_credentials",
]

#: Task tools reachable as ``repsuite <name> ...``: name -> ("module:function", one-line help).
TOOLS: dict[str, tuple[str, str]] = {
    "env": ("repsuite.tools.env:main", "print versions, devices and kernel settings (attach to bug reports)"),
    "nlq": (
        "repsuite.nlq.cli:main",
        "Ego4D NLQ tools: 'repsuite nlq eval GT.json PRED.json' scores officially",
    ),
    "faceswap": (
        "repsuite.faceswap.cli:main",
        "face-swap tools: synth, swap (images, folders, photos + landmarks), align, eval",
    ),
    "serve": ("repsuite.serve.cli:main", "web page for trained models: 'repsuite serve --nlq-ckpt CKPT'"),
}

#: Packages whose LightningModules/DataModules configs may name by bare class name; each task adds its
#: package here when it lands (an import error in one of them is a bug and is not swallowed).
TASK_PACKAGES: tuple[str, ...] = ("repsuite.nlq", "repsuite.faceswap")

_LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: Values the model needs from the DataModule — widths it reads from its data, and settings both sides
#: share (``max_video_len``: the bins a clip is pooled to and the model's learned positions; the face size
#: ``resolution``, which must equal the StyleGAN2 prior's) — linked from
#: ``data.<name>`` to ``model.init_args.<name>`` when both are instantiated, so every config gives each
#: value once, in the data section. The link is skipped for DataModules without the attribute.
LINKED_FROM_DATA: tuple[str, ...] = (
    "video_dim",
    "text_dim",
    "max_video_len",
    "resolution",
    "num_classes",
    "identity_dim",
    "attribute_dim",
)


def _import_task_classes() -> None:
    """Import every LightningModule/DataModule repsuite ships so configs can name them by class name."""
    for module in TASK_PACKAGES:
        importlib.import_module(module)


def wandb_has_credentials() -> bool:
    """True when a W&B API key is available (env var or the netrc entry ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class RepsuiteSaveConfigCallback(SaveConfigCallback):
    """Saves the resolved config next to the logs and, with a W&B logger, into the W&B run.

    The run gets the config under the key ``config`` (nested; kept apart from sweep keys such as
    ``model.lr`` so W&B never reports them as locked) and as a ``repsuite_config.yaml`` file in the run's
    files folder, so a run can be reproduced from W&B alone.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Rank-zero hook: push the resolved config to every W&B logger of the trainer."""
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        text = self.parser.dump(self.config, skip_unset=False)  # keep None values: reproducible as-is
        config = yaml.safe_load(text)
        for logger in wandb_loggers:
            run = logger.experiment
            run.config.update({"config": config}, allow_val_change=True)
            run_dir = getattr(run, "dir", None)
            if run_dir:
                with open(os.path.join(run_dir, "repsuite_config.yaml"), "w", encoding="utf-8") as fh:
                    fh.write(text)


class RepsuiteCLI(LightningCLI):
    """LightningCLI with repsuite's defaults.

    * subclass mode for model and data: configs name ``class_path: NLQModule`` (short names resolve to
      repsuite's classes), any other LightningModule/DataModule works by import path;
    * ``seed_everything`` defaults to 0 (deterministic unless a sweep or the user overrides it);
    * the resolved config is saved to the log dir with overwrite, so a second run in the same folder never
      aborts, and to the W&B run when a :class:`~lightning.pytorch.loggers.WandbLogger` is used;
    * a W&B logger without credentials falls back to offline mode instead of prompting for a key;
    * a Rich progress bar unless the config brings its own or disables the bar;
    * no abbreviated options, so a typo in a config key or sweep parameter fails at parse time.
    """

    def init_parser(self, **kwargs: Any) -> Any:
        """Parsers refuse abbreviated options: ``--trainer.max_epoch`` must not mean ``max_epochs``."""
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Link data-derived sizes (:data:`LINKED_FROM_DATA`) into the model's constructor."""
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Make a configured W&B logger work without an API key (offline) before it is built."""
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        logger_cfg = config.get("trainer", {}).get("logger") if hasattr(config, "get") else None
        if logger_cfg is None or "WandbLogger" not in str(logger_cfg):
            return
        if os.environ.get("WANDB_MODE") is None and not wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
            rank_zero_warn(
                "W&B logger configured but no API key found (WANDB_API_KEY or `wandb login`): logging "
                "offline. Sync later with `wandb sync <run dir>`, or set WANDB_MODE=online after logging in."
            )

    def parse_arguments(self, parser: Any, args: ArgsType) -> None:
        """Remember the command-line words: :meth:`_parse_ckpt_path` needs the ``--model.*`` ones."""
        self._words = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Apply ``--ckpt_path``'s hyper-parameters, keeping the model options typed on the command line.

        The checkpoint's hyper-parameters replace the config's model section (Lightning's rule: the network
        must match its weights), but options the user typed (``--model.nms_iou=null``,
        ``--model.top_k=10``) are kept: dropping them silently would run something else than was asked.
        """
        sub = self.config.get("subcommand")
        if not sub or not self.config[sub].get("ckpt_path"):
            return super()._parse_ckpt_path()
        kept = {}
        for name in _typed_model_options(getattr(self, "_words", [])):
            for key in (f"{sub}.model.init_args.{name}", f"{sub}.model.{name}"):
                if key in self.config:
                    kept[name] = self.config[key]
                    break
        super()._parse_ckpt_path()
        for name, value in kept.items():
            key = f"{sub}.model.init_args.{name}" if f"{sub}.model.init_args" in self.config else None
            target = key or f"{sub}.model.dict_kwargs.{name}"
            self.config[target] = value
        if kept:
            rank_zero_info(f"repsuite: model options from the command line override the checkpoint's: {kept}")
        return None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        wants_bar = config.get("enable_progress_bar") is not False
        own = config.get("callbacks") or []
        configured = [*callbacks, *(own if isinstance(own, list) else [own])]
        if wants_bar and not any(isinstance(cb, ProgressBar) for cb in configured):
            callbacks = [*callbacks, RichProgressBar()]
        return super()._instantiate_trainer(config, callbacks)


def _typed_model_options(words: list[str]) -> list[str]:
    """Names of the ``--model.<name>`` options among command-line words (``--model.x=1``, ``--model.x 1``)."""
    names = []
    for word in words:
        if isinstance(word, str) and word.startswith("--model.") and word != "--model.help":
            name = word[len("--model.") :].split("=", 1)[0]
            names.append(name.removeprefix("init_args."))
    return names


def _tools_epilog() -> str:
    tools = "; ".join(f"'repsuite {name}': {help_}" for name, (_, help_) in TOOLS.items())
    return f"Task tools: {tools}. Run 'repsuite <tool> --help' for their options."


def _run_tool(name: str, argv: list[str]) -> int:
    target, _ = TOOLS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(argv) or 0)


def run_cli(args: ArgsType = None, **cli_kwargs: Any) -> RepsuiteCLI:
    """Build and run :class:`RepsuiteCLI` with repsuite's settings; returns the CLI object.

    Args:
        args: command-line words (defaults to ``sys.argv[1:]``), or a dict config (notebooks), as
            :class:`~lightning.pytorch.cli.LightningCLI` accepts.
        cli_kwargs: overrides of the LightningCLI constructor arguments (e.g. ``run=False``).
    """
    _import_task_classes()
    kwargs: dict[str, Any] = {
        "model_class": LightningModule,
        "datamodule_class": LightningDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_callback": RepsuiteSaveConfigCallback,
        "save_config_kwargs": {"overwrite": True},
        "seed_everything_default": 0,
        "parser_kwargs": {
            "prog": "repsuite",
            "version": __version__,
            "description": "Train, evaluate and run the thesis's NLQ and face-swapping models.",
            "epilog": _tools_epilog(),
        },
        "auto_configure_optimizers": False,
    }
    kwargs.update(cli_kwargs)
    return RepsuiteCLI(args=args, **kwargs)


def main(args: ArgsType = None) -> int:
    """Entry point of the ``repsuite`` console script and ``python -m repsuite``; returns the exit code.

    The first word picks a task tool from :data:`TOOLS` or a Lightning subcommand
    (fit/validate/test/predict). Use :func:`run_cli` to get the CLI object (trainer, model) back.
    """
    argv = None if isinstance(args, dict) else list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    run_cli(args)
    return 0


def _check_subcommands() -> None:
    clash = set(TOOLS) & set(_LIGHTNING_SUBCOMMANDS)
    if clash:  # a tool must never shadow a Lightning subcommand
        raise RuntimeError(f"repsuite tool names clash with Lightning subcommands: {sorted(clash)}")


_check_subcommands()
