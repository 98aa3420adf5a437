"""Progress bars on stderr for the long loops (training epochs, image decoding, layer units)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: lively on a terminal, sparse in a job's log file."""
    return 2.0 if sys.stderr.isatty() else 30.0


def progress(iterable: Iterable, **kwargs) -> tqdm:
    """``iterable`` behind a tqdm bar on stderr refreshed every :func:`progress_interval`
    seconds; ``kwargs`` go to tqdm (``desc``, ``total``, ``unit``, ``leave``)."""
    return tqdm(iterable, file=sys.stderr, mininterval=progress_interval(), **kwargs)
