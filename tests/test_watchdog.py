"""The CHT Watchdog pack (deploy/watchdog/) and the Prometheus rules it is generated from:

- every metric a rule or a dashboard panel names is one a running worker exports (its /metrics
  lists every family, with HELP and TYPE, before its first sample);
- the committed Grafana rules are a fresh generation of deploy/prometheus/alerts.yml;
- promtool accepts the rules, their unit tests (one or more per alert) pass, and a Prometheus
  configuration shaped like Watchdog's with the pack's scrape job passes `promtool check config`.

promtool: Debian's `prometheus` package (`apt-get install prometheus`); those tests skip without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.watchdog import generate_alerts
from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.workers import InProcessWorkers

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
WATCHDOG_DIR = ROOT / "deploy" / "watchdog"
DASHBOARD = WATCHDOG_DIR / "grafana" / "provisioning" / "dashboards" / "CHT" / "cht_rapidpro_worker.json"
EXPORTER_DIR = WATCHDOG_DIR / "exporters" / "cht-rapidpro-worker"
JOB = "cht-rapidpro-worker"
# Series Prometheus makes itself (not the worker's): allowed in expressions.
PROMETHEUS_OWN = {"up"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: install Debian's `prometheus` package (apt-get install "
    "prometheus) or put promtool on PATH")


# ---- the contract checker

def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: the worker's (cht_…) and Prometheus' own `up`."""
    names = set(re.findall(r"\bcht_\w+", expr))
    names.update(n for n in re.findall(r"\b(\w+)\s*\{", expr) if n in PROMETHEUS_OWN)
    return names


def unknown_names(used: Iterable[str], families: set[str]) -> list[str]:
    """Names in `used` that no exported family accounts for (counters and histograms add suffixes)."""
    def known(name: str) -> bool:
        base = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
        return name in PROMETHEUS_OWN or name in families or base in families
    return sorted({name for name in used if not known(name)})


def rule_expressions(text: str) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for rule in generate_alerts.prometheus_rules(text)}


def dashboard_expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            exprs[f"variable {variable['name']}"] = variable["definition"]
    return exprs


def grafana_expressions(text: str) -> dict[str, str]:
    return {f"grafana rule {rule['title']}": query["model"]["expr"]
            for group in yaml.safe_load(text)["groups"] for rule in group["rules"]
            for query in rule["data"] if "expr" in query["model"]}


def contract_problems(exprs: dict[str, str], families: set[str]) -> list[str]:
    """One line per expression naming a metric the worker does not export (empty: all good)."""
    problems = []
    for where, expr in sorted(exprs.items()):
        unknown = unknown_names(metric_names(expr), families)
        if unknown:
            problems.append(f"{where}: unknown {', '.join(unknown)}")
    return problems


def everything_named() -> dict[str, str]:
    rules = rule_expressions((PROMETHEUS_DIR / "alerts.yml").read_text())
    return {**{f"rule {k}": v for k, v in rules.items()},
            **grafana_expressions(generate_alerts.GRAFANA_RULES.read_text()),
            **dashboard_expressions(json.loads(DASHBOARD.read_text()))}


async def exported_families(in_process_workers: InProcessWorkers, couch_url: str) -> set[str]:
    worker = await in_process_workers.start({
        "COUCH_URL": couch_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
        "CHECKPOINT_INTERVAL": "0.2"})
    assert worker.http is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http, \
            http.get(f"http://127.0.0.1:{worker.http.port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {family.name for family in text_string_to_metric_families(text)}


async def test_every_metric_a_rule_or_a_panel_names_is_one_a_running_worker_exports(
        medic_db, in_process_workers):
    families = await exported_families(in_process_workers, medic_db.url)
    exprs = everything_named()
    named = set().union(*(metric_names(e) for e in exprs.values()))
    # The check sees something: the rules' and the board's metrics, counters, a histogram, `up`.
    assert {"up", "cht_rapidpro_lease_active", "cht_rapidpro_messages_total",
            "cht_rapidpro_status_freshness_seconds_bucket", "cht_rapidpro_channel_last_seen_age_seconds",
            "cht_rapidpro_rate_budget_remaining", "cht_rapidpro_feed_backlog"} <= named
    problems = contract_problems(exprs, families)
    assert not problems, ("metric names the worker does not export (renamed? see worker/*/report.py):\n"
                          + "\n".join(problems))


def test_the_checker_lists_a_planted_wrong_name_in_a_rule_and_in_a_panel() -> None:
    families = {"cht_rapidpro_messages", "cht_rapidpro_lease_active", "cht_rapidpro_status_freshness_seconds"}
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = 'sum(cht_rapidpro_lease_actve{instance=~"$instance"})'
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    rules["groups"][0]["rules"][0]["expr"] = "cht_rapidpro_messages_totl > 0 and up == 0"
    exprs = {**{f"rule {k}": v for k, v in rule_expressions(yaml.safe_dump(rules)).items()},
             **dashboard_expressions(dashboard)}
    problems = contract_problems(exprs, families)
    bad = [line for line in problems if "lease_actve" in line or "messages_totl" in line]
    assert bad == [f"panel {dashboard['panels'][1]['title']!r} A: unknown cht_rapidpro_lease_actve",
                   "rule ChtRapidproWorkerDown: unknown cht_rapidpro_messages_totl"], problems
    # The good names are not reported: suffixed counters and histograms, `up`.
    assert unknown_names(["cht_rapidpro_messages_total", "cht_rapidpro_status_freshness_seconds_bucket",
                          "up", "cht_rapidpro_lease_active"], families) == []


# ---- the Grafana rules: generated, Watchdog-shaped

def test_the_committed_grafana_rules_are_a_fresh_generation_of_the_prometheus_rules() -> None:
    fresh = generate_alerts.generate((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert generate_alerts.GRAFANA_RULES.read_text() == fresh, (
        "deploy/watchdog's Grafana rules are out of date: python deploy/watchdog/generate_alerts.py")


def test_every_prometheus_alert_is_one_grafana_rule_with_the_same_query_hold_and_labels() -> None:
    prometheus = generate_alerts.prometheus_rules((PROMETHEUS_DIR / "alerts.yml").read_text())
    grafana = yaml.safe_load(generate_alerts.GRAFANA_RULES.read_text())
    [group] = grafana["groups"]
    assert grafana["apiVersion"] == 1 and group["folder"] == "CHT" and group["interval"] == "1m"
    by_title = {rule["title"]: rule for rule in group["rules"]}
    assert sorted(by_title) == sorted(rule["alert"] for rule in prometheus)
    assert len({rule["uid"] for rule in group["rules"]}) == len(prometheus)
    for rule in prometheus:
        converted = by_title[rule["alert"]]
        query = next(q for q in converted["data"] if q["refId"] == "A")
        assert query["datasourceUid"] == generate_alerts.DATASOURCE_UID
        assert query["model"]["expr"] == rule["expr"] and query["model"]["instant"] is True
        assert converted["for"] == rule.get("for", "0s") and converted["labels"] == rule["labels"]
        assert converted["noDataState"] == "OK" and converted["condition"] == "C"
        assert "$value " not in json.dumps(converted["annotations"])  # Grafana's is $values.A.Value


def test_a_window_too_short_for_the_scrape_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than 4 samples"):
        generate_alerts.grafana_rule({"alert": "X", "expr": "rate(cht_rapidpro_changes_total[2m]) > 0"})
    with pytest.raises(ValueError, match="whole number"):
        generate_alerts.grafana_rule({"alert": "X", "expr": "up == 0", "for": "90s"})
    assert generate_alerts.seconds("1h30m") == 5400


# ---- the dashboard and the scrape job: Watchdog's conventions

def test_the_dashboard_selects_workers_by_an_instance_variable_from_the_scrape_job() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == generate_alerts.DASHBOARD_UID and "id" not in dashboard
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    assert f'up{{job="{JOB}"}}' in variable["definition"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["uid"] == generate_alerts.DATASOURCE_UID
        assert all('instance=~"$instance"' in t["expr"] for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
    # What CHT's own metrics cannot show has a panel.
    named = set().union(*(metric_names(t["expr"]) for p in panels for t in p["targets"]))
    for metric in ("cht_rapidpro_messages_total", "cht_rapidpro_status_tracked",
                   "cht_rapidpro_in_doubt_waiting_operator", "cht_rapidpro_parked_changes",
                   "cht_rapidpro_rate_budget_remaining", "cht_rapidpro_lease_active",
                   "cht_rapidpro_lease_acquisitions_total", "cht_rapidpro_channel_last_seen_age_seconds",
                   "cht_rapidpro_feed_backlog", "cht_rapidpro_checkpoint_age_seconds"):
        assert metric in named, metric


def test_the_compose_file_mounts_the_scrape_job_where_watchdogs_prometheus_reads_them() -> None:
    compose = yaml.safe_load((EXPORTER_DIR / "compose.yml").read_text())
    [volume] = compose["services"]["prometheus"]["volumes"]
    source, target, mode = volume.split(":")
    # Paths relative to the Watchdog checkout, as its exporters/*/compose.yml write them.
    assert source == "./exporters/cht-rapidpro-worker/scrape-custom.yml" and mode == "ro"
    assert re.fullmatch(r"/etc/prometheus/scrape_configs/[\w-]+\.yml", target)
    [job] = yaml.safe_load((EXPORTER_DIR / "scrape.yml").read_text())["scrape_configs"]
    assert job["job_name"] == JOB
    assert generate_alerts.seconds(job["scrape_interval"]) == generate_alerts.SCRAPE_INTERVAL_S


# ---- promtool

def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = set(rule_expressions((PROMETHEUS_DIR / "alerts.yml").read_text()))
    assert alerts - firing == set(), "alerts no unit test sees firing"
    assert alerts - quiet == set(), "alerts no unit test sees quiet"


@needs_promtool
def test_a_wrong_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: an alert made too eager is caught."""
    shutil.copy(PROMETHEUS_DIR / "alerts.test.yml", tmp_path)
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert "cht_rapidpro_checkpoint_age_seconds > 900" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("cht_rapidpro_checkpoint_age_seconds > 900",
                                                       "cht_rapidpro_checkpoint_age_seconds > 60"))
    tested = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert tested.returncode != 0 and "ChtRapidproFeedStalled" in tested.stdout + tested.stderr


@needs_promtool
def test_a_watchdog_shaped_prometheus_config_with_the_scrape_job_passes_promtool(tmp_path: Path) -> None:
    """Watchdog's prometheus/config/prometheus.yml (5-minute default scrape) with the pack's job.
    Watchdog includes scrape_configs/*.yml with `scrape_config_files` (Prometheus >= 2.43); an older
    promtool (Debian 12 ships 2.42) gets the same job inline."""
    version = promtool("--version", cwd=tmp_path).stdout + promtool("--version", cwd=tmp_path).stderr
    major_minor = tuple(int(n) for n in re.search(r"version (\d+)\.(\d+)", version).groups())  # type: ignore[union-attr]
    config: dict[str, Any] = {"global": {"scrape_interval": "5m"},
                              "scrape_configs": [{"job_name": "prometheus",
                                                  "static_configs": [{"targets": ["localhost:9090"]}]}]}
    scrape_dir = tmp_path / "scrape_configs"
    scrape_dir.mkdir()
    shutil.copy(EXPORTER_DIR / "scrape.yml", scrape_dir / "cht-rapidpro-worker.yml")
    if major_minor >= (2, 43):
        config["scrape_config_files"] = [str(scrape_dir / "*.yml")]
    else:
        job = yaml.safe_load((EXPORTER_DIR / "scrape.yml").read_text())["scrape_configs"]
        config["scrape_configs"] += job
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
