"""The alerts' commands: payload models and the handlers they register with the dispatcher.

``snapshot``, ``pause``, ``resume`` and ``state`` (``reload`` belongs to the runner: it reads the
config file and hands the fresh ``alerts`` section to ``AlertService.reload``). Parsing, size
limits, the allowlist and replies are ``device.commands``'s business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from device.alerts.jobs import SnapshotJob
from device.commands import Command, CommandDispatcher, CommandError, Reply, TargetName

if TYPE_CHECKING:
    from device.alerts.service import AlertService


class SnapshotCommand(Command):
    camera: TargetName | None = Field(None, description="One camera; null: every camera.")


class PauseCommand(Command):
    camera: TargetName | None = Field(None, description="One camera; null: every camera.")
    rule: TargetName | None = Field(None, description="One rule; null: every rule.")
    minutes: float | None = Field(
        None,
        gt=0,
        le=7 * 24 * 60,
        description="Resume by itself after this long; null: after commands.max_pause_minutes "
        "(or never, when that is null).",
    )


class ResumeCommand(Command):
    camera: TargetName | None = Field(None, description="One camera; null: every camera.")
    rule: TargetName | None = Field(None, description="One rule; null: every rule.")


class StateCommand(Command):
    pass


def register(dispatcher: CommandDispatcher, alerts: AlertService) -> None:
    """The alerts' handler table."""
    stepper = alerts.stepper
    max_minutes = dispatcher.max_pause_minutes

    def snapshot(cmd: SnapshotCommand, reply: Reply) -> None:
        stepper.check_target(cmd.camera, None)
        cameras = [cmd.camera] if cmd.camera else list(stepper.cameras)
        alerts.worker.put(SnapshotJob(cameras, reply))  # encoded and saved in the worker

    def pause(cmd: PauseCommand, reply: Reply) -> None:
        minutes = cmd.minutes
        if max_minutes is not None:
            if minutes is not None and minutes > max_minutes:
                raise CommandError(
                    f"minutes: at most {max_minutes:g} on this device (commands.max_pause_minutes)"
                )
            minutes = minutes or max_minutes
        paused = stepper.pause(cmd.camera, cmd.rule, minutes)
        reply.ok({"paused": paused, "minutes": minutes})

    def resume(cmd: ResumeCommand, reply: Reply) -> None:
        reply.ok({"resumed": stepper.resume(cmd.camera, cmd.rule)})

    def state(cmd: StateCommand, reply: Reply) -> None:
        reply.ok(alerts.state())

    dispatcher.register("snapshot", SnapshotCommand, snapshot)
    dispatcher.register("pause", PauseCommand, pause)
    dispatcher.register("resume", ResumeCommand, resume)
    dispatcher.register("state", StateCommand, state)
