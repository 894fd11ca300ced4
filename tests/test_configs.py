"""Every config in configs/ is parsed by the real CLI (typos and stale keys fail here)."""

import re
from pathlib import Path

import pytest
import yaml

from repsuite.cli import run_cli
from tests.conftest import ROOT, TOY_DATA, TOY_MODEL

# sweeps have their own test; extract/ holds `repsuite nlq extract-video --config` files
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not {"sweeps", "extract"} & set(p.parts))
EXTRACT = sorted((ROOT / "configs/nlq/extract").glob("*.yaml"))


def test_there_are_configs():
    assert any("trainer" in p.parts for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(path: Path, in_tmp, capsys):
    text = path.read_text()
    content = yaml.safe_load(text) or {}
    args = ["fit", "--config", str(path)]
    base = re.search(r"^# apply on top of: (\S+)", text, re.M)
    if base:  # an ablation fragment: parse it layered on its recipe, as its comment tells users to
        args = ["fit", "--config", str(ROOT / base.group(1)), "--config", str(path)]
    elif "model" not in content:  # a fragment: complete it with the toy model to parse the whole thing
        args += ["--model", TOY_MODEL, "--data", TOY_DATA]
    with pytest.raises(SystemExit) as exc:
        run_cli([*args, "--print_config"])
    assert exc.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    for section in ("trainer", "model", "data"):
        given = content.get(section) or {}
        given = given.get("init_args", given) if section != "trainer" else given
        shown = (
            printed[section].get("init_args", printed[section]) if section != "trainer" else printed[section]
        )
        for key, value in given.items():
            if not isinstance(value, (dict, list)):
                assert shown[key] == value, (section, key)


@pytest.mark.parametrize("path", EXTRACT, ids=lambda p: p.name)
def test_extract_config_is_read_by_extract_video(path: Path):
    from repsuite.nlq.cli import build_parser

    ns = build_parser().parse_args(["extract-video", "--config", str(path), "videos/", "-o", "out"])
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(ns, key) == value, key


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_fixed_checkpoint_folders_replace_last_ckpt(path: Path):
    """A config that writes checkpoints to a fixed folder is read back from ``<dirpath>/last.ckpt`` by the
    next demo step (``nlq submit``, the swapper's ``id_encoder_ckpt``, ``faceswap eval``). Lightning's version
    counter would write ``last-v1.ckpt`` on a re-run and leave the stale file in place, so it is off."""
    callbacks = (yaml.safe_load(path.read_text()) or {}).get("trainer", {}).get("callbacks") or []
    for cb in callbacks:
        args = cb.get("init_args", {})
        if cb["class_path"].endswith("ModelCheckpoint") and args.get("dirpath") and args.get("save_last"):
            assert args.get("enable_version_counter") is False, path
