"""The "Quantization Blindspots" detection benchmark: five backdoor detectors (Neural Cleanse,
Activation Clustering, Spectral Signatures, STRIP, fine-pruning as a detector) run on one model
at several precisions. ``DETECTORS`` is the registry; :mod:`.run` holds the stage and the
collation; the ``detection`` table is :mod:`qcbench.tables.detection`."""

from qcbench.detection import activation_clustering, fine_pruning, neural_cleanse, spectral, strip  # noqa: F401
from qcbench.detection.base import (
    DETECTORS,
    PRECISION_RE,
    STATUSES,
    DetectionInputs,
    Detector,
    Verdict,
    at_precision,
    check_precision,
    create_detector,
    register_detector,
)

__all__ = [
    "DETECTORS",
    "PRECISION_RE",
    "STATUSES",
    "DetectionInputs",
    "Detector",
    "Verdict",
    "at_precision",
    "check_precision",
    "create_detector",
    "register_detector",
]
