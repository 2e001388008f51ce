"""/console and /docs in a real browser (headless Chromium) against a live gateway with data.

The screenshot stays in the test's tmp dir (pytest keeps the last runs' dirs) for a person to
look at; its path is printed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from idemgate.testing import GatewayServer

NAMESPACE = "payments"
BROWSER_TIMEOUT_S = 90
# How long Chromium lets the page's script run (virtual time: it waits for the fetches).
SCRIPT_BUDGET_MS = "10000"


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "Chromium is missing: `make pytest` installs it (Debian package chromium)"
    return found


def browse(url: str, profile: Path, *args: str) -> str:
    answer = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses
            "--disable-gpu",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={SCRIPT_BUDGET_MS}",
            "--hide-scrollbars",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return answer.stdout


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A gateway whose payments namespace has replays, a stuck key and a busy one."""
    path = tmp_path_factory.mktemp("console") / "records.db"
    with (
        GatewayServer(storage=f"sqlite:///{path}") as server,
        httpx.Client(base_url=f"{server.url}/v1/records/{NAMESPACE}") as client,
    ):
        for index in range(3):
            token = client.post(f"/paid-{index}/claim").json()["lease_token"]
            client.post(f"/paid-{index}/complete", json={"lease_token": token, "result": index})
            assert client.post(f"/paid-{index}/claim").status_code == 200
        assert client.post("/paid-0/claim").status_code == 200  # a fourth duplicate
        assert client.post("/stuck-1/claim", json={"lease_ms": 1}).status_code == 201
        assert client.post("/busy-1/claim", json={"lease_ms": 600_000}).status_code == 201
        assert client.post("/busy-1/claim").status_code == 409
        yield server


def counts_row(dom: str, namespace: str, period: str) -> dict[str, int]:
    row = re.search(rf'<tr data-namespace="{namespace}" data-period="{period}">(.*?)</tr>', dom)
    assert row, f"no {period} row for {namespace}"
    return {event: int(n) for event, n in re.findall(r'data-event="(\w+)">(\d+)<', row[1])}


def test_the_console_shows_counts_plots_and_stuck_keys(
    live_gateway: GatewayServer, tmp_path: Path
) -> None:
    url = f"{live_gateway.url}/console?namespace={NAMESPACE}"
    dom = browse(url, tmp_path / "profile", "--dump-dom")
    for period in ("1h", "24h"):
        assert counts_row(dom, NAMESPACE, period) == {
            "claims": 10,  # 3 fresh, 4 replays, stuck-1, busy-1 and its in-progress answer
            "replays": 4,
            "in_progress": 1,
            "fingerprint_mismatches": 0,
            "lease_takeovers": 0,
            "lease_lost": 0,
        }
    assert counts_row(dom, "other", "1h") == dict.fromkeys(counts_row(dom, "other", "1h"), 0)
    assert 'aria-label="duplicates prevented per minute"' in dom
    assert "duplicates prevented per minute: peak 4" in dom
    # Rendered by the page's script from the records API: the stuck key is marked stale.
    stuck = re.search(r'<tbody id="stuck-rows">(.*?)</tbody>', dom, re.S)
    assert stuck
    rows = re.findall(r"<tr>(.*?)</tr>", stuck[1])
    assert [row.split("</td>")[0].removeprefix("<td>") for row in rows] == ["busy-1", "stuck-1"]
    assert '<td class="stale">ended' in rows[1]
    assert "ends in" in rows[0]
    assert rows[0].count("<button>") == 2
    assert "2 key(s) in progress" in dom

    screenshot = tmp_path / "console.png"
    browse(url, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,1400")
    assert screenshot.stat().st_size > 10_000
    print(f"console screenshot: {screenshot}")


def test_docs_render_from_the_gateways_own_assets(
    live_gateway: GatewayServer, tmp_path: Path
) -> None:
    page = httpx.get(f"{live_gateway.url}/docs").text
    assert not re.search(r"(src|href)=['\"]https?:", page)
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{live_gateway.url}/docs/assets/{asset}").status_code == 200
    dom = browse(f"{live_gateway.url}/docs", tmp_path / "profile", "--dump-dom")
    assert "/v1/records/{namespace}/{key}/claim" in dom
    assert "/v1/records/{namespace}/{key}/expire" in dom
