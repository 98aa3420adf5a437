"""Semantic checks of the ``detection:`` config section (what the schema cannot know)."""

from __future__ import annotations

import inspect


def detection_errors(cfg: dict) -> list[str]:
    from qcbench.detection.base import DETECTORS
    from qcbench.models import MODELS

    out = table6_errors(cfg)
    det = cfg.get("detection")
    if not det:
        return out
    for i, ds in enumerate(det["datasets"]):
        if ds not in cfg["data"]["sources"]:
            out.append(f"config key 'detection.datasets.{i}': dataset {ds!r} has no entry under 'data.sources'")
        if ds not in cfg["clean"]:
            out.append(f"config key 'detection.datasets.{i}': no clean-training settings for {ds!r} under 'clean'")
    for i, arch in enumerate(det["archs"]):
        if arch not in MODELS:
            out.append(f"config key 'detection.archs.{i}': unknown arch {arch!r}; registered: {MODELS.names()}")
    for i, atk in enumerate(det["attacks"]):
        if atk not in cfg["attacks"]:
            out.append(f"config key 'detection.attacks.{i}': attack {atk!r} has no entry under 'attacks'")
    for i, name in enumerate(det["detectors"]):
        spec = det["settings"].get(name)
        if spec is None:
            out.append(
                f"config key 'detection.detectors.{i}': detector {name!r} has no entry under 'detection.settings'"
            )
        elif spec["method"] not in DETECTORS:
            out.append(
                f"config key 'detection.settings.{name}.method': unknown detector {spec['method']!r}; "
                f"registered: {DETECTORS.names()}"
            )
        else:
            params = {k: v for k, v in spec.items() if k != "method"}
            try:
                inspect.signature(DETECTORS.get(spec["method"])).bind(**params)
            except TypeError as err:
                out.append(f"config key 'detection.settings.{name}': {err} (detector {spec['method']!r})")
    return out


def table6_errors(cfg: dict) -> list[str]:
    from qcbench.defenses import is_fp_defense

    t6 = cfg.get("table6")
    if not t6:
        return []
    out = []
    for i, atk in enumerate(t6["attacks"]):
        if atk not in cfg["attacks"]:
            out.append(f"config key 'table6.attacks.{i}': attack {atk!r} has no entry under 'attacks'")
    for i, name in enumerate(t6["defenses"]):
        spec = cfg["defenses"].get(name)
        if spec is None:
            out.append(f"config key 'table6.defenses.{i}': defense {name!r} has no entry under 'defenses'")
        elif not is_fp_defense(spec["method"]):
            out.append(
                f"config key 'table6.defenses.{i}': {name!r} is not an FP-level defense (Table 6 purifies FP models)"
            )
    for key in ("datasets", "archs"):
        known = cfg["data"]["sources"] if key == "datasets" else cfg["archs"]
        for i, v in enumerate(t6[key]):
            if v not in known:
                out.append(f"config key 'table6.{key}.{i}': {v!r} is not configured")
    return out
