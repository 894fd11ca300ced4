"""The benchmark scripts keep running (figures are read by people, never asserted)."""

import json
import subprocess
import sys

import pytest

from repsuite.cli import run_cli
from tests.conftest import PYTHON, ROOT, subprocess_env


@pytest.mark.slow
def test_ops_benchmark_runs_and_writes_json(tmp_path):
    out, md = tmp_path / "ops.json", tmp_path / "ops.md"
    cmd = [
        PYTHON,
        str(ROOT / "benchmarks/ops.py"),
        "--quick",
        "--only",
        "nlq_coattn",
        "--reps",
        "1",
        "--out",
        str(out),
        "--markdown",
        str(md),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "reference time / fast time" in res.stdout
    result = json.loads(out.read_text())
    rows = {(r["case"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {("nlq_coattn", "fast"), ("nlq_coattn", "reference")}
    assert all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows.values())
    assert result["matmul_peak_gflops"] > 0
    assert "| nlq_coattn | fast |" in md.read_text()


@pytest.mark.slow
def test_ops_benchmark_span_encoder_kernels(tmp_path):
    out = tmp_path / "ops.json"
    cmd = [PYTHON, str(ROOT / "benchmarks/ops.py"), "--quick", "--only", "span", "--reps", "1", "--no-memory"]
    res = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, env=subprocess_env(), timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "span_selfattn_dropout: unblocked time / fast time" in res.stdout
    assert "span_dwconv_k7: reference time / fast time" in res.stdout
    rows = {(r["case"], r["variant"]) for r in json.loads(out.read_text())["rows"]}
    assert rows == {("span_selfattn_dropout", v) for v in ("fast", "unblocked", "reference")} | {
        ("span_dwconv_k7", "fast"),
        ("span_dwconv_k7", "reference"),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, expect",
    [
        ("nlq.py", ["--quick", "--reps", "1", "--no-memory"], "unblocked / blocked attention time"),
        ("faceswap.py", ["--quick", "--reps", "1", "--no-memory"], "fixed compiled"),
        (
            "nlq_ablation.py",
            ["--quick", "--epochs", "1", "--rows", "self", "base"],
            "cross-attention (Ours-base)",
        ),
        ("extract.py", ["--quick"], "bounded by"),
        ("nlq_naq.py", ["--quick", "--seeds", "0"], "R@1 IoU0.3 gain of (b) over (a)"),
    ],
)
def test_nlq_benchmarks_run(tmp_path, script, args, expect):
    out = tmp_path / "result.json"
    extra = ["--work", str(tmp_path / "work")] if script in ("nlq_ablation.py", "nlq_naq.py") else []
    cmd = [PYTHON, str(ROOT / "benchmarks" / script), *args, *extra, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert expect in res.stdout
    assert json.loads(out.read_text())


def test_every_ablation_row_parses_through_the_cli(capsys):
    """Each Table 2.1 row's options are real options of the demo recipe (a typo would fail at parse time)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from nlq_ablation import ROWS
    finally:
        sys.path.pop(0)
    for _, args in ROWS.values():
        with pytest.raises(SystemExit) as exc:
            run_cli(["fit", "--config", str(ROOT / "configs/nlq/demo.yaml"), *args, "--print_config"])
        assert exc.value.code == 0, capsys.readouterr().err
