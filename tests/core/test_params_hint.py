"""carbench.core.params_hint: under `dvc exp run -S`, a params error says how to put params.yaml back."""
from __future__ import annotations

import subprocess

from support.scripts import run_stage_script


def test_params_error_under_dvc_says_how_to_put_back_a_params_yaml_that_differs_from_the_commit(tmp_path):
    """`dvc exp run -S train.lr=-0.1` writes the value into params.yaml before the stage refuses it: the error line
    says so when params.yaml differs from the last commit, and nothing more where that is not the case."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("train:\n  lr: 0.01\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run([*git, *args], cwd=repo, check=True)
    body = """
        from carbench.core.cli import run
        from carbench.config import ConfigError
        def main():
            raise ConfigError("train.lr must be > 0.0, got -0.1")
        run(main)
    """
    under_dvc = {"DVC_ROOT": str(repo), "DVC_STAGE": "resolve"}
    hint = "params.yaml differs from the last commit"

    def error_line(env: dict) -> str:
        result = run_stage_script(tmp_path, body, env)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr.strip()

    assert error_line(under_dvc) == "error: train.lr must be > 0.0, got -0.1"          # params.yaml as committed
    (repo / "params.yaml").write_text("train:\n  lr: -0.1\n")                             # what -S wrote
    line = error_line(under_dvc)
    assert line.startswith("error: train.lr must be > 0.0, got -0.1; " + hint)
    assert line.endswith("`git checkout params.yaml` puts the committed file back")
    assert hint not in error_line({})                                                     # not under DVC
    assert hint not in error_line({**under_dvc, "CARBENCH_STOP_FILE": str(tmp_path / "stop")})   # our wrappers
    queued = repo / ".dvc" / "tmp" / "exps" / "tmp1"                                      # a queued run's copy,
    subprocess.run(["git", "clone", "-q", str(repo), str(queued)], check=True)           # with -S applied there
    (queued / "params.yaml").write_text("train:\n  lr: -0.1\n")
    assert hint not in error_line({"DVC_ROOT": str(queued), "DVC_STAGE": "resolve"})
