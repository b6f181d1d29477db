"""The ingest server: field samples from devices into an inbox on this workstation (or S3).

``edgecam-train serve INBOX`` runs it; ``edgecam-train token add DEVICE`` gives a device its
token. Modules, one concern each:

- :mod:`.tokens`: the tokens file (one token per device, only its sha256 stored) and the live
  registry the server authenticates against;
- :mod:`.multipart`: the upload's two parts (``image``, ``meta``) out of a bounded body;
- :mod:`.validate`: the sidecar against :class:`device.samples.SampleMeta`, the JPEG (header
  pixel limit, then a decode), the content hash;
- :mod:`.store`: the :class:`~.store.Store` interface (idempotent ``put``, listing and reads
  for the review page), :mod:`.store_local` and :mod:`.store_s3` its two implementations;
- :mod:`.stats`: per-device counters and the batch log line;
- :mod:`.app`: the Starlette application (API v1); :mod:`.server`: uvicorn, TLS, sockets;
- :mod:`.bench`: ``make bench-ingest``.

Nothing here imports TensorFlow.
"""
