"""The paper's tables (and the project's own), rendered from the collated results.

Shaped like timm's ``models/``: :mod:`._base` is the leaf (registry :data:`TABLES`, context,
blocks, formatting, the paper join, display labels, renderers); one module per family of tables
registers its tables with :func:`register_table` and imports only :mod:`._base` (and the
ablation tables' shared :mod:`._ablation`), never another family nor this package; this
``__init__`` imports every family, so ``TABLES`` lists them all once ``qcbench.tables`` is
imported. Which cells a table needs is planned apart, without pandas, in :mod:`qcbench.plan`.

Families: :mod:`.main` (Tables 1, 2, 3, 8, 11), :mod:`.ablations` (Tables 4, 5, 7, 9, 10, 12),
:mod:`.triggers`, :mod:`.schemes`, :mod:`.verdicts`, :mod:`.detection` (``detection`` and Table 6),
:mod:`.deployment` (every 8-bit attack in every real int8 runtime).
"""

from qcbench._registry import import_submodules
from qcbench.tables._base import (
    HTML_STYLE,
    NO_DEFENSE,
    NOT_PRODUCED,
    OURS,
    TABLES,
    Block,
    PaperReference,
    TableContext,
    cell,
    defense_label,
    fmt,
    pick,
    register_table,
    render,
    table_inputs,
    to_html,
    to_latex,
    to_markdown,
    with_paper,
)

import_submodules(__name__, __path__)  # every module registers its entries

__all__ = [
    "HTML_STYLE",
    "NOT_PRODUCED",
    "NO_DEFENSE",
    "OURS",
    "TABLES",
    "Block",
    "PaperReference",
    "TableContext",
    "cell",
    "defense_label",
    "fmt",
    "pick",
    "register_table",
    "render",
    "table_inputs",
    "to_html",
    "to_latex",
    "to_markdown",
    "with_paper",
]
