"""Sending field samples to the ingest server (docs/field-loop.md).

``config`` (the ``upload:`` section, the token), ``outbox`` (samples waiting on disk),
``client`` (one HTTP(S) connection, standard library), ``uploader`` (the "upload" thread).
Import the modules themselves: this package imports nothing.
"""
