"""config/smoke.yaml changes budgets only: the smoke run is the paper DAG with fewer steps."""

from __future__ import annotations

import pytest
from qcbench.config import check_config, load_config, read_yaml

from .conftest import ROOT

PAPER, SMOKE = ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml"

# Leaf key names the smoke overlay may set anywhere: counts of epochs, samples, steps and images.
BUDGET_KEYS = {
    "epochs", "samples_per_epoch", "iterations", "pda_iterations", "calib_batches", "calib_images",
    "test_images", "eval_images", "seeds", "te_epochs", "ft_epochs", "n_rounds", "nb_iter",
    "steps_per_epoch", "clean_images", "inspect_images", "n_overlays", "n_inputs", "n_background",
    "batches", "eval_every", "images", "cam_images", "tsne_images",
}  # fmt: skip
# Site settings of the data sources (where the fabricated files are), and the config's label.
SITE_KEYS = {"path", "download", "verify_md5"}


def leaves(tree: dict, prefix: tuple = ()):
    """(key path, value) of every non-mapping value of ``tree``."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def overlay_problems(overlay: dict, paper: dict) -> list[str]:
    """What in ``overlay`` is not a budget change of ``paper`` (the resolved paper config)."""
    out = []
    for path, value in leaves(overlay):
        key = ".".join(map(str, path))
        if path == ("name",):
            continue
        if len(path) == 4 and path[:2] == ("data", "sources") and path[3] in SITE_KEYS:
            if path[2] not in paper["data"]["sources"]:
                out.append(f"{key}: no such data source in the paper config")
            continue
        if path[-1] not in BUDGET_KEYS:
            out.append(f"{key}: not a budget key")
            continue
        node = paper
        for p in path[:-1]:  # the entry exists; the key itself may be an optional one (default null)
            if not isinstance(node, dict) or p not in node:
                out.append(f"{key}: not a key of the paper config")
                break
            node = node[p]
        else:
            node = node.get(path[-1])
            if path[-1] == "seeds":
                if value != [0]:
                    out.append(f"{key}: seeds must be [0], not {value}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{key}: {value!r} is not a positive count")
            elif node is not None and value > node:
                out.append(f"{key}: {value} is above the paper's {node}")
    return out


def test_smoke_overlay_sets_budgets_only():
    assert overlay_problems(read_yaml(SMOKE), load_config(PAPER)) == []


@pytest.mark.parametrize(
    "overlay, problem",
    [
        ({"run": {"datasets": ["cifar10"]}}, "run.datasets: not a budget key"),
        ({"attacks": {"pqbackdoor": {"trigger": {"size": 0.1}}}}, "trigger.size: not a budget key"),
        ({"archs": {"vit": {"depth": 2}}}, "archs.vit.depth: not a budget key"),
        ({"quant": {"calib_batch_size": 8}}, "quant.calib_batch_size: not a budget key"),
        ({"ablations": {"table3": {"seeds": [0, 1]}}}, "seeds must be [0]"),
        ({"defenses": {"lac": {"iterations": 20000}}}, "20000 is above the paper's 10000"),
        ({"defenses": {"lac2": {"iterations": 2}}}, "defenses.lac2.iterations: not a key of the paper config"),
        ({"data": {"sources": {"mnist": {"path": "x"}}}}, "no such data source"),
        ({"data": {"sources": {"cifar10": {"image_size": 16}}}}, "image_size: not a budget key"),
        ({"eval": {"test_images": 0}}, "is not a positive count"),
    ],
)
def test_overlay_check_refuses_what_is_not_a_budget(overlay, problem):
    problems = overlay_problems(overlay, load_config(PAPER))
    assert len(problems) == 1 and problem in problems[0]


def test_smoke_config_is_valid_and_keeps_the_paper_grid(tmp_path):
    paper, smoke = load_config(PAPER), load_config(PAPER, SMOKE)
    for src in smoke["data"]["sources"].values():
        (tmp_path / src["path"]).mkdir(parents=True)
        assert src["path"].startswith("resources/fabricated/") and src["download"] is False
    check_config(load_config(PAPER, SMOKE, resolve=False), workdir=tmp_path)
    assert smoke["run"] == paper["run"] | {"seeds": [0]}
    for name in ("archs", "figures", "table6"):
        assert smoke[name].keys() == paper[name].keys()


def test_ci_slice_is_valid_and_covers_every_table_architecture_and_dataset(tmp_path):
    """tests/smoke/slice.yaml (the CI slice run by tests/test_smoke_slice.py) stays a valid overlay
    of the paper config as both change, and still asks for every architecture and dataset."""
    from qcbench.plan import ablation_specs, main_cells

    slice_ = ROOT / "tests" / "smoke" / "slice.yaml"
    cfg = load_config(PAPER, SMOKE, slice_)
    for src in cfg["data"]["sources"].values():
        (tmp_path / src["path"]).mkdir(parents=True)
    check_config(load_config(PAPER, SMOKE, slice_, resolve=False), workdir=tmp_path)
    settings = [(d, a) for d in cfg["run"]["datasets"] for a in cfg["run"]["archs"]]
    settings += [pair for spec in ablation_specs(cfg).values() for pair in spec["settings"]]
    assert {a for _, a in settings} == set(cfg["archs"])
    assert {d for d, _ in settings} | set(cfg["detection"]["datasets"]) == set(cfg["data"]["sources"])
    assert main_cells(cfg)
