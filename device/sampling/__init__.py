"""Field sampling: the device keeps the frames worth learning from (docs/field-loop.md).

``config`` (the ``sampling:`` section), ``policies`` (pure decisions and limits), ``writer``
(the JPEG + sidecar writer thread), ``sink`` (the loop's sink and the alert stepper's observer).
Import the modules themselves: this package imports nothing, so that ``device.config`` can use
``device.sampling.config`` without a cycle.
"""
