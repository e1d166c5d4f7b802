"""The registry watcher: the service follows ClinicalTrials.gov itself and produces its own events.

``passes`` runs one pass (version check, paged /studies, per-page transactions, events through the same
intake as every other producer); ``records`` turns one registry record into its identity, content hash and
deterministic events; ``lock`` keeps two passes from running at once; ``status`` shows operators where the
watcher stands. The HTTP side is ``alerts.ctgov.client`` (and its local stand-in, ``alerts.ctgov.standin``).
"""
