import json
import subprocess

import pytest

from repsuite import __version__
from repsuite.cli import TOOLS, main, run_cli
from tests.conftest import PYTHON, ROOT, TOY_DATA, TOY_MODEL, subprocess_env


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [PYTHON, "-m", "repsuite", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=subprocess_env(),
        timeout=300,
    )


def test_version_subprocess():
    res = _run("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"repsuite {__version__}"


def test_help_lists_subcommands_and_tools():
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    for word in ("fit", "validate", "test", "predict", "repsuite env"):
        assert word in res.stdout


def test_fit_help_lists_trainer_model_data():
    res = _run("fit", "--help")
    assert res.returncode == 0, res.stderr
    for word in ("--trainer.precision", "--model", "--data", "--seed_everything", "--ckpt_path"):
        assert word in res.stdout


def test_console_script_matches_module(tmp_path):
    exe = ROOT / ".venv" / "bin" / "repsuite"
    if not exe.exists():
        pytest.skip("console script only exists in the project's venv")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=subprocess_env())
    assert res.returncode == 0 and __version__ in res.stdout


def test_env_tool_json(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["repsuite"] == __version__
    assert info["reference_ops"] is False
    assert set(TOOLS) >= {"env"}


def test_unknown_config_key_fails_at_parse_time(in_tmp, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--model", TOY_MODEL, "--data", TOY_DATA, "--trainer.max_epoch=1"])
    assert exc.value.code != 0
    assert "max_epoch" in capsys.readouterr().err


def test_unknown_model_argument_fails_at_parse_time(in_tmp, capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--model", TOY_MODEL, "--model.learning_rate=0.1", "--data", TOY_DATA])
    assert "learning_rate" in capsys.readouterr().err


def test_seed_defaults_to_zero_and_print_config(in_tmp, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--model", TOY_MODEL, "--data", TOY_DATA, "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "seed_everything: 0" in out
    assert "class_path: tests.helpers.toy.ToyModule" in out


def test_import_is_lazy_and_public_names_resolve():
    code = (
        "import sys, repsuite\n"
        "heavy = [m for m in ('torch', 'lightning', 'open_clip', 'timm', 'wandb') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
        "print(repsuite.MultiHeadCrossAttention.__module__, repsuite.RepsuiteCLI.__name__)\n"
        "print(sorted(set(repsuite.__all__) - set(dir(repsuite))))\n"
    )
    res = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr
    heavy, names, missing = res.stdout.strip().splitlines()
    assert heavy == "none"  # `import repsuite` pulls in nothing heavy until a public name is used
    assert names == "repsuite.ops.attention RepsuiteCLI"
    assert missing == "[]"


def test_unknown_attribute_raises_attribute_error():
    import repsuite

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        repsuite.NoSuchThing  # noqa: B018


def test_tool_help_and_exit_code():
    res = _run("env", "--help")
    assert res.returncode == 0 and "--json" in res.stdout
    res = _run("env", "--bogus")
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr
