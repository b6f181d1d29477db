"""The review page and the rest of the field loop's second half: review, merge, retrain.

``edgecam-train serve INBOX`` serves the review page beside the upload API (same process, same
port): reviewers log in with their own passwords (``edgecam-train reviewer add NAME``), see the
samples the devices sent, grouped by similarity, and confirm, relabel or reject them. Modules,
one concern each:

- :mod:`.labels`: what a reviewed label may be (it becomes a class folder on merge);
- :mod:`.users`: the reviewers file (argon2id hashes) and the live registry logins check;
- :mod:`.db`: the review database (SQLite): the append-only decisions, the current state, the
  index of the inbox, the merges and the login sessions;
- :mod:`.index`: keeps the database's index of the inbox up to date (sidecar fields, pHash,
  embeddings of the run's model);
- :mod:`.groups`: grouping similar samples and marking near-duplicates of reviewed ones (numpy);
- :mod:`.explain`: the run's Keras model on the workstation: embeddings and Grad-CAM overlays;
- :mod:`.auth`: sessions (cookies), CSRF tokens, login throttling;
- :mod:`.web`: the Starlette routes under ``/review`` (pages, images, the JSON API);
- :mod:`.cli`: ``reviewer``, ``purge``, ``merge`` and ``retrain`` subcommands.

The merge and the retraining live in :mod:`training.merge` and :mod:`training.retrain`.
Nothing here imports TensorFlow until a run's model is actually used.
"""
