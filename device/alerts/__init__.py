"""Surveillance alerts: rules with hysteresis, events, snapshots, a durable outbox, Home Assistant.

Modules, one concern each:

- ``config``: the ``alerts:`` section of the device config (pydantic models).
- ``rules``: the pure rule engine (hysteresis, confirmation, cooldown, active hours) and
  ``check_rules`` (rule labels and cameras against the model and the config); no I/O.
- ``events``: event records and their MQTT payloads.
- ``stepper``: the inference side: regions of interest, stepping the rules, new events.
- ``jobs`` and ``worker``: typed jobs for the "alerts-worker" thread (snapshots, messages).
- ``snapshots``: JPEG snapshots on disk with a retention policy.
- ``outbox``: the SQLite store-and-forward queue.
- ``forwarder``: the thread that publishes the outbox and deletes entries on PUBACK.
- ``homeassistant``: MQTT discovery payloads.
- ``commands``: the alerts' commands (snapshot, pause, resume, state) for ``device.commands``.
- ``service``: the sink that wires them into the device loop.

Importing this package imports nothing heavy; ``service`` pulls in OpenCV lazily.
"""

from device.alerts.rules import check_rules

__all__ = ["check_rules"]
