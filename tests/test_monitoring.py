"""deploy/monitoring: the alert rules pass their promtool unit tests, and every metric that
the rules and the Grafana dashboard name is one the API or a worker really exports (read
off their live /metrics after some traffic; the GPU gauges, which only a CUDA worker
shows, from their definition in workers/metrics.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_metrics import embed, names, scrape
from workers.metrics import GPU_GAUGES

MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*(?!\w)(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on",
             "ignoring", "group_left", "group_right"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers, less functions and
    aggregations (followed by `(`), keywords, label matchers, grouping labels and ranges."""
    bare = _STRINGS.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}


def alert_rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]  # fmt: skip


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{endpoint=~"/a|/b"}[5m])))'
        " / on (queue) group_left max(y) > 1e3 unless z offset 5m and bool_ratio"
    )
    assert metric_names(expr) == {"x_bucket", "y", "z", "bool_ratio"}


@needs_promtool
def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                            capture_output=True, text=True)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    # Every rule has a unit test that expects it to fire.
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in cases for case in test["alert_rule_test"]
             if case["exp_alerts"]}  # fmt: skip
    assert fired == {rule["alert"] for rule in alert_rules()}


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's $__rate_interval as 5m, parsed by promtool as a rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, expr in enumerate(dashboard_exprs())]  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    read = set().union(*map(metric_names, dashboard_exprs()))
    # requests, latency, queue depth, batch fill, cache hit ratio, GPU memory
    assert read >= {"embedding_requests_total", "embedding_duration_seconds_bucket",
                    "embedding_queue_depth", "embedding_batch_size_sum",
                    "embedding_cache_hits_total", "embedding_gpu_memory_used_bytes"}  # fmt: skip


def test_rules_and_dashboard_name_only_metrics_we_export(
    live_api: str, worker_metrics_port: int
) -> None:
    """Names come from the live API's and the session worker's /metrics, after traffic that
    makes every labelled series appear (a miss, a hit, an error, a forward pass). The GPU
    gauges appear only once CUDA is initialised in a worker, so they are taken from
    workers/metrics.py's GPU_GAUGES, the definitions its GpuCollector exports."""
    text = [f"monitoring probe {uuid.uuid4()}", f"monitoring probe {uuid.uuid4()} two words"]
    assert embed(live_api, text).status_code == 200  # a miss: a job, a worker pass
    assert embed(live_api, text).status_code == 200  # a hit
    assert embed(live_api, []).status_code == 400  # an error
    exported = names(scrape(live_api)) | names(scrape(f"http://127.0.0.1:{worker_metrics_port}"))
    exported |= {name for name, _ in GPU_GAUGES.values()}

    read = {rule["alert"]: metric_names(str(rule["expr"])) for rule in alert_rules()}
    read |= {f"dashboard: {expr}": metric_names(expr) for expr in dashboard_exprs()}
    assert all(read.values()), [where for where, found in read.items() if not found]
    unknown = {where: found - exported for where, found in read.items() if found - exported}
    assert not unknown, unknown
