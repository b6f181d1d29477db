"""Home Assistant MQTT discovery: one HA device per edgecam device, entities per camera and rule.

Config topics follow ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` and are
published retained (QoS 1) on every (re)connect; a rule removed by ``reload`` gets an empty
retained config, which removes its entity. Entities (keys as in HA's MQTT integration schemas):

- ``binary_sensor`` per (camera, rule): on while an event is active; state from the retained
  ``<prefix>/<device>/<camera>/rule/<rule>`` JSON (``value_json.state`` is ON / OFF, the rest are
  attributes: event_id, label, score, ts);
- ``sensor`` per camera: the current top label, and its score in % (from ``classification``);
- ``image`` per camera: the last snapshot (JPEG bytes on ``<camera>/snapshot``, subscribed at
  QoS 1 like the other entities);
- ``binary_sensor`` with ``device_class: problem`` per camera whose health is watched
  (device.health): on while the retained ``<camera>/health`` says ``problem``; its attributes
  name the problems (dark, bright, covered, blurred, frozen, no_frames).

Every entity is tied to the device block and takes its availability from the retained
``status`` topic (JSON; ``availability_template`` picks ``state``: online / offline).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from device.alerts.config import HomeAssistantConfig, RuleConfig
from device.topics import Topics


def ha_id(text: str) -> str:
    """node_id / object_id: HA allows [a-zA-Z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class Discovery:
    def __init__(self, cfg: HomeAssistantConfig, topics: Topics, version: str, model_name: str):
        self.cfg = cfg
        self.topics = topics
        self.node = ha_id(f"edgecam_{topics.device_id}")
        self.device = {
            "identifiers": [self.node],
            "name": cfg.name or topics.device_id,
            "manufacturer": "edgecam",
            "model": f"edgecam camera ({model_name})",
            "sw_version": version,
        }
        self.origin = {"name": "edgecam", "sw_version": version}
        self.availability = {
            "availability_topic": topics.status,
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    def _topic(self, component: str, object_id: str) -> str:
        return f"{self.cfg.discovery_prefix}/{component}/{self.node}/{ha_id(object_id)}/config"

    def _entity(self, object_id: str, name: str, **keys: Any) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.node}_{ha_id(object_id)}",
            **keys,
            **self.availability,
            "device": self.device,
            "origin": self.origin,
        }

    def rule_config(self, camera: str, rule: RuleConfig) -> tuple[str, dict[str, Any]]:
        object_id = f"{camera}_{rule.name}"
        state = self.topics.rule_state(camera, rule.name)
        keys: dict[str, Any] = {
            "state_topic": state,
            "value_template": "{{ value_json.state }}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "json_attributes_topic": state,
            "qos": 1,
        }
        if rule.device_class:
            keys["device_class"] = rule.device_class
        return self._topic("binary_sensor", object_id), self._entity(
            object_id, f"{camera} {rule.name}", **keys
        )

    def _config(
        self, component: str, oid: str, name: str, **keys: Any
    ) -> tuple[str, dict[str, Any]]:
        """(config topic, payload) of one entity."""
        return self._topic(component, oid), self._entity(oid, name, **keys)

    def camera_configs(self, camera: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        classification = self.topics.classification(camera)
        if self.cfg.top_label_sensor:
            out.append(
                self._config(
                    "sensor",
                    f"{camera}_top_label",
                    f"{camera} top label",
                    state_topic=classification,
                    value_template="{{ value_json.top[0].label if value_json.top else 'none' }}",
                    icon="mdi:tag-search",
                )
            )
            out.append(
                self._config(
                    "sensor",
                    f"{camera}_top_score",
                    f"{camera} top score",
                    state_topic=classification,
                    value_template="{{ ((value_json.top[0].score if value_json.top else 0)"
                    " * 100) | round(1) }}",
                    unit_of_measurement="%",
                    state_class="measurement",
                    icon="mdi:percent",
                )
            )
        out.append(
            self._config(
                "image",
                f"{camera}_snapshot",
                f"{camera} snapshot",
                image_topic=self.topics.snapshot(camera),
                content_type="image/jpeg",
                qos=1,
            )
        )
        return out

    def health_config(self, camera: str) -> tuple[str, dict[str, Any]]:
        """The camera's health problem sensor (``device_class: problem``)."""
        health = self.topics.camera(camera, "health")
        return self._config(
            "binary_sensor",
            f"{camera}_health",
            f"{camera} camera problem",
            state_topic=health,
            value_template="{{ value_json.state }}",
            payload_on="problem",
            payload_off="ok",
            json_attributes_topic=health,
            device_class="problem",
            entity_category="diagnostic",
            qos=1,
        )

    def configs(
        self,
        cameras: Sequence[str],
        rules_by_camera: dict[str, list[RuleConfig]],
        health_cameras: Sequence[str] = (),
    ) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for cam in cameras:
            out.extend(self.camera_configs(cam))
            if cam in health_cameras:
                out.append(self.health_config(cam))
            for rule in rules_by_camera.get(cam, []):
                out.append(self.rule_config(cam, rule))
        return out
