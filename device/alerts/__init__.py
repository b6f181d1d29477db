"""Surveillance alerts: rules with hysteresis, events, snapshots, a durable outbox, Home Assistant.

Modules, one concern each:

- ``config``: the ``alerts:`` section of the device config (pydantic models).
- ``rules``: the pure rule engine (hysteresis, confirmation, cooldown, active hours); no I/O.
- ``events``: event records and their MQTT payloads.
- ``snapshots``: JPEG snapshots on disk with a retention policy.
- ``outbox``: the SQLite store-and-forward queue.
- ``forwarder``: the thread that publishes the outbox and deletes entries on PUBACK.
- ``homeassistant``: MQTT discovery payloads.
- ``commands``: ``cmd/<command>`` payload validation.
- ``service``: the sink that wires them into the device loop.

Importing this package imports nothing heavy; ``service`` pulls in OpenCV lazily.
"""
