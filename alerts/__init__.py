"""Trial alerts: email alerts for ClinicalTrials.gov trial changes and new trials for a condition."""

__version__ = "0.1.0"
