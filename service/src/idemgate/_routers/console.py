"""``/console`` for operators and ``/docs`` without a CDN: pages that work inside a VPC.

The console is one server-rendered page: this worker's per-namespace counts of the last hour
and day with plots of the duplicates prevented, then, for one namespace, its keys in progress
(read by a small inline script from ``GET /v1/records/{namespace}``) with expire and delete
buttons that call the records API. The script sends the token an operator types in as a
Bearer token, so the page has exactly the API's own access. Nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html
import importlib.resources

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from idemgate._observability import (
    NAMESPACE_EVENTS,
    OTHER_NAMESPACE,
    NamespaceCounters,
    NamespaceTotals,
)

__all__ = ["install_docs", "router"]

router = APIRouter(include_in_schema=False)
_DOCS_ASSETS = "/docs/assets"
_PLOT_WIDTH, _PLOT_HEIGHT = 480, 120
_COLUMNS = {
    "claims": "claims",
    "replays": "duplicates prevented",
    "in_progress": "in-progress answers",
    "fingerprint_mismatches": "fingerprint mismatches",
    "lease_takeovers": "lease takeovers",
    "lease_lost": "lease-lost completes",
}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:12px 24px}header h1{margin:0;font-size:18px}
main{padding:16px 24px;max-width:1100px}section{background:#fff;border:1px solid #dde1e7;
border-radius:6px;padding:12px 16px;margin-bottom:16px}h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}th,td{text-align:right;padding:4px 8px;
border-bottom:1px solid #eef0f3}th:first-child,td:first-child{text-align:left}
th{font-weight:600;color:#4a5468}td.num{font-variant-numeric:tabular-nums}
.note{color:#5b6478;font-size:12px}a{color:#2156c9}svg{display:block}
button{font:inherit;padding:2px 10px;margin-left:4px;cursor:pointer}
input{font:inherit;padding:2px 6px}.stale{color:#b3261e;font-weight:600}
td{white-space:nowrap}.plots{display:flex;flex-wrap:wrap;gap:16px 32px}
"""

_SCRIPT = """
const main = document.querySelector("main");
const namespace = main.dataset.namespace;
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("idemgate-token") || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("idemgate-token", tokenInput.value); loadStuck();
});
function headers() {
  const token = tokenInput.value.trim();
  return token ? {"Authorization": "Bearer " + token} : {};
}
function since(ms) {
  const s = Math.round(Math.abs(ms) / 1000);
  const text = s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" :
    Math.round(s / 3600) + " h";
  return ms >= 0 ? "ended " + text + " ago" : "ends in " + text;
}
function path(key) {
  return "/v1/records/" + encodeURIComponent(namespace) + "/" + encodeURIComponent(key);
}
async function act(method, key, suffix) {
  const answer = await fetch(path(key) + suffix, {method, headers: headers()});
  document.getElementById("status").textContent =
    method + " " + key + suffix + ": HTTP " + answer.status;
  await loadStuck();
}
async function loadStuck() {
  const body = document.getElementById("stuck-rows");
  const status = document.getElementById("stuck-status");
  const url = "/v1/records/" + encodeURIComponent(namespace) + "?status=in_progress&limit=100";
  const answer = await fetch(url, {headers: headers()});
  if (!answer.ok) {
    status.textContent = "The records API answered HTTP " + answer.status +
      (answer.status === 401 || answer.status === 403 ? ": enter an admin token above." : ".");
    body.replaceChildren();
    return;
  }
  const page = await answer.json();
  const now = Date.now();
  body.replaceChildren(...page.items.map((item) => {
    const row = document.createElement("tr");
    const age = now - item.lease_expires_at;
    for (const [text, cls] of [[item.key, ""], [String(item.attempt), "num"],
                               [since(age), age >= 0 ? "stale" : ""]]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (cls) cell.className = cls;
      row.append(cell);
    }
    const actions = document.createElement("td");
    for (const [label, method, suffix] of [["expire", "POST", "/expire"],
                                           ["delete", "DELETE", ""]]) {
      const button = document.createElement("button");
      button.textContent = label;
      button.addEventListener("click", () => act(method, item.key, suffix));
      actions.append(button);
    }
    row.append(actions);
    return row;
  }));
  status.textContent = page.items.length + " key(s) in progress" +
    (page.cursor ? " (the first 100; `idemgate records list` pages through the rest)" : "") +
    ", latest lease end first.";
}
if (namespace) loadStuck();
"""


def _plot(values: list[int], *, title: str, unit: str) -> str:
    """Bars of ``values`` (oldest first) as an inline SVG, scaled to the largest one."""
    peak = max(values) or 1
    step = _PLOT_WIDTH / len(values)
    bars = "".join(
        f'<rect x="{index * step:.1f}" y="{_PLOT_HEIGHT - value / peak * (_PLOT_HEIGHT - 14):.1f}"'
        f' width="{max(step - 1, 1):.1f}" height="{value / peak * (_PLOT_HEIGHT - 14):.1f}"'
        f' fill="#2f6fdf"><title>{value}</title></rect>'
        for index, value in enumerate(values)
    )
    return (
        f'<svg role="img" aria-label="{html.escape(title)}" width="{_PLOT_WIDTH}" '
        f'height="{_PLOT_HEIGHT + 16}" viewBox="0 0 {_PLOT_WIDTH} {_PLOT_HEIGHT + 16}">'
        f'<text x="0" y="10" font-size="11" fill="#5b6478">{html.escape(title)}: peak {peak}'
        f"</text>{bars}"
        f'<line x1="0" x2="{_PLOT_WIDTH}" y1="{_PLOT_HEIGHT}" y2="{_PLOT_HEIGHT}" '
        f'stroke="#99a1b3"/><text x="0" y="{_PLOT_HEIGHT + 14}" font-size="11" '
        f'fill="#5b6478">{len(values)} {unit} ago</text><text x="{_PLOT_WIDTH}" '
        f'y="{_PLOT_HEIGHT + 14}" font-size="11" fill="#5b6478" text-anchor="end">now</text>'
        "</svg>"
    )


def _counts_table(totals: list[NamespaceTotals]) -> str:
    heads = "".join(f"<th>{label}</th>" for label in _COLUMNS.values())
    rows = []
    for counted in totals:
        name = html.escape(counted.namespace)
        for period, hours in (("last hour", 1), ("last day", 24)):
            cells = "".join(
                f'<td class="num" data-event="{event}">{counted.total(event, hours=hours)}</td>'
                for event in _COLUMNS
            )
            if hours != 1:
                link = ""
            elif counted.namespace == OTHER_NAMESPACE:  # many namespaces: nothing to list
                link = name
            else:
                link = f'<a href="?namespace={name}">{name}</a>'
            rows.append(
                f'<tr data-namespace="{name}" data-period="{hours}h"><td>{link}</td>'
                f"<td>{period}</td>{cells}</tr>"
            )
    return f"<table><tr><th>namespace</th><th></th>{heads}</tr>{''.join(rows)}</table>"


def _page(totals: list[NamespaceTotals], namespace: str | None, max_namespaces: int) -> str:
    replays = NAMESPACE_EVENTS.index("replays")
    shown = next((counted for counted in totals if counted.namespace == namespace), None)
    plots = ""
    if shown is not None:
        plots = _plot(
            [minute[replays] for minute in shown.per_minute],
            title="duplicates prevented per minute",
            unit="minutes",
        ) + _plot(
            [hour[replays] for hour in shown.per_hour],
            title="duplicates prevented per hour",
            unit="hours",
        )
    name = html.escape(namespace or "")
    stuck = (
        f"<section><h2>Keys in progress in {name}</h2>"
        '<p class="note">A key whose lease ended with no retry is stuck: expire ends its lease '
        "so the next claim runs the work again; delete forgets the record.</p>"
        '<p id="stuck-status" class="note">Loading…</p>'
        "<table><thead><tr><th>key</th><th>attempt</th><th>lease</th><th></th></tr></thead>"
        '<tbody id="stuck-rows"></tbody></table><p id="status" class="note"></p></section>'
        if namespace
        else '<section><p class="note">Pick a namespace above to see its keys in progress '
        "and plots.</p></section>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>idemgate console</title>"
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        "<body><header><h1>idemgate console</h1></header>"
        f'<main data-namespace="{name}">'
        '<section><label>Admin token (kept in this tab only): <input id="token" '
        'type="password" autocomplete="off"></label></section>'
        "<section><h2>What the gateway did, per namespace</h2>"
        f"{_counts_table(totals)}"
        '<p class="note">Counted by this worker process since it started (a replica with '
        "several workers, or several replicas, each count their own share: Prometheus sums "
        f"them from /metrics). The first {max_namespaces} namespaces get rows of their own; "
        "the rest count as other.</p></section>"
        + (
            f'<section><h2>Duplicates prevented in {name}</h2><div class="plots">{plots}</div>'
            "</section>"
            if plots
            else ""
        )
        + stuck
        + f"</main><script>{_SCRIPT}</script></body></html>"
    )


@router.get("/console")
async def console(
    request: Request, namespace: str | None = Query(default=None, max_length=128)
) -> HTMLResponse:
    counters: NamespaceCounters = request.app.state.namespace_counters
    totals = counters.totals()
    if namespace is None:
        namespace = next((counted.namespace for counted in totals[:-1]), None)
    return HTMLResponse(_page(totals, namespace, counters.max_namespaces))


def install_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` with their scripts and styles served by the gateway itself.

    Create ``app`` with ``docs_url=None, redoc_url=None``; the assets come from the
    ``fastapi-offline`` package.
    """
    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(_DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{_DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{_DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
