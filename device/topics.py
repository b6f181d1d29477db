"""The device's identity on the broker and every topic it uses, built in one place.

``Topics`` is shared by the MQTT publisher, the alerts and the command dispatcher, so a topic is
spelt once (see the MQTT table in README / docs)::

    <prefix>/<device>/status                      retained, last will "offline"
    <prefix>/<device>/metrics
    <prefix>/<device>/<camera>/classification
    <prefix>/<device>/<camera>/alert | snapshot
    <prefix>/<device>/<camera>/rule/<rule>        retained rule state
    <prefix>/<device>/cmd/<command>               commands to the device
    <prefix>/<device>/cmd/<command>/result        replies
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str  # the first topic level (mqtt.topic_prefix), e.g. "edgecam"
    device_id: str

    @property
    def base(self) -> str:
        """``<prefix>/<device>``: every topic of this device starts with it."""
        return f"{self.prefix}/{self.device_id}"

    def topic(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    @property
    def status(self) -> str:
        return self.topic("status")

    @property
    def metrics(self) -> str:
        return self.topic("metrics")

    def camera(self, camera: str, what: str) -> str:
        """``<camera>/<what>``: classification, alert, snapshot, health."""
        return self.topic(camera, what)

    def classification(self, camera: str) -> str:
        return self.camera(camera, "classification")

    def alert(self, camera: str) -> str:
        return self.camera(camera, "alert")

    def snapshot(self, camera: str) -> str:
        return self.camera(camera, "snapshot")

    def rule_state(self, camera: str, rule: str) -> str:
        return self.topic(camera, "rule", rule)

    def command(self, name: str) -> str:
        """``cmd/<name>``; ``command("+")`` is the subscription for every command."""
        return self.topic("cmd", name)

    def command_result(self, name: str) -> str:
        return self.topic("cmd", name, "result")

    def command_name(self, topic: str) -> str | None:
        """The ``<name>`` of a ``cmd/<name>`` topic of this device, else None."""
        head = self.command("")
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None
