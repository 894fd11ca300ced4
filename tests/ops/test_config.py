import subprocess

import pytest

from repsuite.ops import reference_ops, set_reference_ops, use_reference_ops
from tests.conftest import PYTHON, subprocess_env

PROBE = "from repsuite.ops import use_reference_ops; print(use_reference_ops())"


@pytest.mark.parametrize(
    ("value", "expected"), [("1", "True"), ("on", "True"), ("0", "False"), ("", "False")]
)
def test_env_var_sets_the_switch(value, expected):
    env = subprocess_env(REPSUITE_REFERENCE_OPS=value)
    res = subprocess.run([PYTHON, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected


def test_bad_env_value_is_a_clear_error():
    env = subprocess_env(REPSUITE_REFERENCE_OPS="maybe")
    res = subprocess.run([PYTHON, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0
    assert "REPSUITE_REFERENCE_OPS='maybe': expected one of 1/0" in res.stderr


def test_context_manager_nests_and_restores():
    assert use_reference_ops() is False
    with reference_ops():
        assert use_reference_ops() is True
        with reference_ops(False):
            assert use_reference_ops() is False
        assert use_reference_ops() is True
    assert use_reference_ops() is False
    set_reference_ops(True)
    try:
        assert use_reference_ops() is True
    finally:
        set_reference_ops(False)
