"""deploy/prometheus-alerts.yml: valid for Prometheus, firing as meant, on metrics that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from idemgate.testing import GatewayServer

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus-alerts.yml"
UNIT_TESTS = Path(__file__).with_name("prometheus-alerts.test.yml")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make pytest` installs it (Debian package prometheus)"
    return found


def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_the_alerts_fire_on_the_series_they_watch() -> None:
    tested = subprocess.run(
        [promtool(), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_reads_metrics_a_gateway_exports(tmp_path: Path) -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    with GatewayServer(storage=f"sqlite:///{tmp_path}/alerts.db") as gateway:
        exported = {
            sample.name
            for family in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text)
            for sample in family.samples
        }
    for rule in rules:
        used = set(re.findall(r"\bidemgate_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)
