"""scripts/offline.py: the overrides file becomes `dvc exp run -S` arguments that DVC accepts."""
from __future__ import annotations

import yaml
from support.params import ROOT, repo_params
from support.scripts import load_script, run_script


def test_flatten_uses_add_or_override_and_json_values():
    pairs = load_script("offline").flatten({"data": {"source": "synthetic"}, "model": {"cnn_widths": [8, 16]}, "a": {"b": {"c": 1}}})
    assert pairs == ['++data.source="synthetic"', "++model.cnn_widths=[8, 16]", "++a.b.c=1"]


def test_every_offline_override_names_a_known_section():
    overrides = yaml.safe_load((ROOT / "configs" / "overrides" / "offline.yaml").read_text())
    params = repo_params()
    assert set(overrides) <= set(params)
    assert set(overrides["experiments"]) <= set(params["experiments"])


def test_params_yaml_is_restored_byte_for_byte_even_when_the_run_fails(tmp_path):
    import sys

    original = b"# a comment Hydra would drop\ntrain: {lr: 0.01}\n"
    (tmp_path / "params.yaml").write_bytes(original)
    rewrite = "import pathlib, sys; pathlib.Path('params.yaml').write_text('train:\\n  lr: 3e-4\\n'); sys.exit(3)"
    status = load_script("offline").run_keeping_params([sys.executable, "-c", rewrite], tmp_path)
    assert status == 3
    assert (tmp_path / "params.yaml").read_bytes() == original


def test_the_echo_is_the_user_s_arguments_and_a_count_not_every_override():
    line = load_script("offline").echo(["-n", "base"], 34, ROOT / "configs" / "overrides" / "offline.yaml")
    assert line == "dvc exp run -n base (with 34 overrides from configs/overrides/offline.yaml)"


def test_a_knob_of_yours_that_reaches_no_stage_is_refused_before_dvc_starts():
    result = run_script("offline.py", "-n", "ep3", "-S", "train.epochs=3")
    assert (result.returncode, result.stdout) == (1, "")      # not even the `+ dvc exp run` line
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: train.epochs=3 reaches no experiment: every trained experiment sets its own "
                           "epochs (tl_resnet50_frozen: ")
    assert "set experiments.<name>.train.epochs instead" in line and line.endswith("(--allow-unused runs it anyway)")


def test_help_says_what_passes_through_to_dvc_exp_run():
    result = run_script("offline.py", "--help")
    assert result.returncode == 0
    assert "passes through to `dvc exp run`" in result.stdout
    for option in ("-n NAME", "-S KEY=VALUE", "STAGE ...", "--allow-unused"):
        assert option in result.stdout, option


def test_missing_overrides_file_is_one_error_line(tmp_path):
    result = run_script("offline.py", "--overrides", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: overrides file not found: {tmp_path / 'nope.yaml'} "
                                          "(see --overrides)"]


def test_review_report_shows_only_dvc_s_error_line(tmp_path):
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text("#!/bin/sh\nprintf \"ERROR: unknown Git revision 'nope'\\n\\nHaving any troubles? "
                                 "Hit us up at https://dvc.org/support\\n\" >&2\nexit 255\n")
    (bin_dir / "dvc").chmod(0o755)
    result = run_script("review_report.py", "base", "nope", env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["error: dvc metrics diff exited 255: ERROR: unknown Git revision 'nope'"]
