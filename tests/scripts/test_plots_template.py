"""scripts/plots_template.py: the committed offline template of the plots page is generated from the vendored
Vega builds (with their licences), and .dvc/config points DVC at it."""
from __future__ import annotations

from support.params import ROOT
from support.scripts import load_script

plots_template = load_script("plots_template")


def test_committed_template_is_generated_from_the_vendored_builds():
    assert plots_template.TEMPLATE.read_text(encoding="utf-8") == plots_template.render(), \
        "stale .dvc/plots/index.html: run python scripts/plots_template.py"
    lock = plots_template.read_lock()
    for name, build in plots_template.PACKAGES.items():
        assert lock[name]["file"] == build
        assert (plots_template.VENDOR / name / "LICENSE").read_text().strip(), f"{name}: no licence text"


def test_dvc_config_points_at_the_offline_template():
    from configobj import ConfigObj

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    # DVC resolves a relative plots.html_template against .dvc/
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == plots_template.TEMPLATE.resolve()
