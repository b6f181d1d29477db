"""Model updates over MQTT, safely (docs/fleet.md).

- ``config``: the ``rollout:`` section;
- ``signing``: what an operator signs (a statement of the bundle's files) and the device's
  Ed25519 check; ``archive``: the bundle archive (.tar.gz), packed reproducibly, unpacked
  strictly; ``download``: HTTP(S) with allowed schemes, a size cap and a timeout;
- ``store``: ``<state_dir>/models/<sha12>/`` bundles and the ``current`` / ``previous`` links;
  ``startup``: which model a device starts on;
- ``shadow``: the new model beside the live one on copies of live frames;
- ``service``: the ``model`` and ``rollback`` commands, step by step.

Nothing is imported here: ``device.config`` imports ``device.rollout.config`` alone.
"""
