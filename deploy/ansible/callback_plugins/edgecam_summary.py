"""Ansible callback: a per-host table at the end of an edgecam rollout.

Reads the ``edgecam_report`` fact that the edgecam role sets on each host (step, result, model,
what it replaced, how it was checked, the error), adds hosts that failed before they could
report (unreachable, a task error) and hosts that never ran because the canary failed.
"""

from __future__ import annotations

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: edgecam_summary
type: aggregate
short_description: per-host summary of an edgecam rollout
description: Prints one line per host (canary first) after the play recap.
requirements: [enabled in ansible.cfg (callbacks_enabled)]
"""

COLUMNS = ("host", "step", "result", "model", "was", "checked", "error")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "edgecam_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.reports: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.order: list[str] = []
        self.fleet: list[str] = []

    def _host(self, result) -> str:
        name = result._host.get_name()
        if name not in self.order and name != "localhost":
            self.order.append(name)
        return name

    def v2_runner_on_ok(self, result) -> None:
        host = self._host(result)
        report = (result._result.get("ansible_facts") or {}).get("edgecam_report")
        if isinstance(report, dict):
            self.reports[host] = report
            self.fleet = self.fleet or list(report.get("fleet") or [])

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            msg = str(result._result.get("msg") or "failed").strip().splitlines()
            self.errors[self._host(result)] = f"{result._task.get_name()}: {msg[0] if msg else ''}"

    def v2_runner_on_unreachable(self, result) -> None:
        msg = str(result._result.get("msg") or "unreachable").strip().splitlines()
        self.errors[self._host(result)] = f"unreachable: {msg[0] if msg else ''}"

    def rows(self, stats) -> list[tuple[str, ...]]:
        hosts = [h for h in self.order + self.fleet if h != "localhost"]
        rows = []
        for host in dict.fromkeys(hosts):
            report = self.reports.get(host, {})
            summary = stats.summarize(host) if host in stats.processed else None
            if summary is None:
                result, error = "not run", "the rollout stopped before this host"
            elif summary["unreachable"]:
                result, error = "UNREACHABLE", self.errors.get(host, "")
            elif summary["failures"] or report.get("result") == "FAILED":
                result = "FAILED"
                error = report.get("error") or self.errors.get(host, "")
                if report.get("rolled_back"):
                    result = "FAILED, rolled back"
            else:
                result, error = report.get("result", "ok"), ""
            rows.append((
                host,
                report.get("step", ""),
                result,
                report.get("model", ""),
                report.get("was", ""),
                str(report.get("verified", "")),
                error,
            ))  # fmt: skip
        return rows

    def v2_playbook_on_stats(self, stats) -> None:
        rows = self.rows(stats)
        if not rows:
            return
        widths = [
            min(max(len(r[i]) for r in [COLUMNS, *rows]), 60 if i < 6 else 200)
            for i in range(len(COLUMNS))
        ]
        lines = ["", "edgecam rollout summary:"]
        for row in [COLUMNS, *rows]:
            lines.append("  ".join(c[: widths[i]].ljust(widths[i]) for i, c in enumerate(row)))
        self._display.display("\n".join(lines).rstrip())
