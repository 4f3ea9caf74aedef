"""The real Prometheus scrapes a gateway processing simulated traffic; every dashboard query
and every alert rule evaluates through Prometheus's HTTP API and returns data."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from adapters.runtime import run
from gateway import config as cfg
from gateway.model import Version
from gateway.simulate import simulate
from tests import brokers
from tests.conftest import ROOT, run_cli
from tests.mosquitto import free_port

DASHBOARD = ROOT / "grafana" / "dashboards" / "aes-gateway.json"
ALERTS = ROOT / "prometheus" / "alerts.yml"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_rules())} rules found" in result.stdout


async def query(session: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        return dict(await response.json())


def textfile_collector(directory: Path) -> tuple[ThreadingHTTPServer, int]:
    """What node_exporter's textfile collector serves, as far as Prometheus can tell: the
    directory's *.prom files over HTTP (here one file, one path)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def test_prometheus_evaluates_every_panel_and_alert(tmp_path: Path) -> None:
    gateway_port, prom_port = free_port(), free_port()
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    collector, collector_port = textfile_collector(textfiles)
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: aes-gateway
    static_configs: [{{targets: ["127.0.0.1:{gateway_port}"]}}]
  - job_name: textfiles
    metrics_path: /aes-gateway-backup.prom
    static_configs: [{{targets: ["127.0.0.1:{collector_port}"]}}]
""")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{prom_port}"

    async def scenario() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        topo = await brokers.declare()
        sim = simulate(60, 41, bad_share=0.05, scenarios=False)
        stop = asyncio.Event()
        try:
            await brokers.publish(topo.q22, [m.body for m in sim.messages
                                             if m.version is Version.V2_2])
            push = f'[[sources]]\ntype = "push"\nlisten = "127.0.0.1:{free_port()}"\n'
            config = cfg.parse(brokers.config_toml(topo, str(tmp_path / "g.db"), push).replace(
                'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{gateway_port}"'))
            service = asyncio.create_task(run(config, stop=stop))
            await asyncio.sleep(3)
            await asyncio.to_thread(  # the backup timer's run, beside the live gateway
                run_cli, "backup", str(tmp_path), "--store", str(tmp_path / "g.db"),
                "--metrics", str(textfiles / "aes-gateway-backup.prom"))
            await brokers.publish(topo.q30, [m.body for m in sim.messages
                                             if m.version is not Version.V2_2])
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # at least a few scrapes
                    up = await query(session, base, "count_over_time(up[1m])")
                    if up.get("data", {}).get("result") and float(
                            up["data"]["result"][0]["value"][1]) >= 6:
                        break
                    await asyncio.sleep(0.5)
                results = {}
                for expr in dashboard_queries():
                    results[expr] = await query(session, base, expr)
                for rule in alert_rules():
                    results[rule["expr"]] = await query(session, base, rule["expr"])
                    quantity = rule["annotations"]["quantity"]
                    results[quantity] = await query(session, base, quantity)
                async with session.get(f"{base}/api/v1/rules") as response:
                    rules = await response.json()
            stop.set()
            await service
        finally:
            await brokers.delete(topo)
        return results, rules

    try:
        results, rules = asyncio.run(scenario())
    finally:
        collector.shutdown()
        prometheus.terminate()
        prometheus.wait(timeout=30)
    assert all(r["status"] == "success" for r in results.values())
    for expr in dashboard_queries():
        assert results[expr]["data"]["result"], f"no data for panel query {expr}"
    for rule in alert_rules():
        quantity = rule["annotations"]["quantity"]
        assert results[quantity]["data"]["result"], f"no data for {rule['alert']}: {quantity}"
    loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
    assert len(loaded) == len(alert_rules())
    assert all(r["health"] == "ok" for r in loaded), loaded
