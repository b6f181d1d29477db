"""Privacy: masks and face redaction applied to every image before it leaves the device.

- ``config``: the ``privacy:`` config section (faces, masks per camera);
- ``masks``: polygons blacked out in place;
- ``blazeface``: SSD anchors, box decoding, weighted NMS (pure numpy);
- ``detector``: BlazeFace on the device's inference backend;
- ``redact``: blur / pixelate / box;
- ``guard``: ``PrivacyGuard.protect`` (fail closed: ``Withheld``), the one entry point;
- ``cli``: ``edgecam-device redact``; ``bench``: its cost.

Importing this package imports nothing heavy; import the modules you use.
"""
