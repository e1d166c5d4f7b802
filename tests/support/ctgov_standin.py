"""The ClinicalTrials.gov API v2 stand-in, where test support lives.

It is implemented in the package, ``alerts.ctgov.standin``, because ``alerts demo`` serves the demo's
registry with it and the package never imports from ``tests/``. Its answers are checked against the
registry's official OpenAPI file in ``tests/ctgov/test_standin.py``.
"""

from alerts.ctgov.standin import FAULTS, PIECES, RegistryStandIn, project, stamp

__all__ = ["FAULTS", "PIECES", "RegistryStandIn", "project", "stamp"]
