"""`carbench app` from the command line: it serves the page and prints its address; a bad models folder is one
error line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from carbench.app import command

ADDRESS = re.compile(r"^carbench app: (\d+) experiments at (http://127\.0\.0\.1:\d+/?) \(Ctrl-C stops it\)$")
START_TIMEOUT_S = 180


def test_serves_the_page_and_prints_its_address(world):
    env = {**os.environ, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen([sys.executable, "-m", "carbench.app.command", "app", "--models", str(world.models),
                             "--crops", str(world.crops), "--eval", str(world.eval), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()          # blocks until the page is up (or the command ended)
        found = ADDRESS.match(line)
        assert found, f"{line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        assert int(found.group(1)) == len(world.params.trained) + 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(found.group(2), timeout=30) as response:
                    html = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert "<title>carbench: try the models</title>" in html or "carbench: try the models" in html
        remote = re.findall(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//[^"'\s>]+""", html)
        assert not remote, f"the page loads from the network: {remote}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_missing_models_folder_is_one_error_line(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        command.main(["app", "--models", str(tmp_path / "none"), "--crops", str(world.crops)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: models directory not found")


def test_app_is_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        command.main([])
    assert "app" in capsys.readouterr().err
    assert command.build_parser().parse_args(["app"]).port == command.DEFAULT_PORT
