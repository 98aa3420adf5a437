"""The detection stage (every detector on one model at one precision -> one Parquet file, a row
per detector) and the collation of every row into ``results/detection.parquet``."""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import traceback

import pandas as pd
import torch

from qcbench import io, provenance
from qcbench.cells import calibration, scheme_for
from qcbench.data import load_prepared
from qcbench.detection.base import DetectionInputs, at_precision, check_precision, create_detector
from qcbench.metrics import evaluate as evaluate_model
from qcbench.triggers import create_trigger

DETECTION_COLUMNS = {
    "dataset": "object",
    "arch": "object",
    "attack": "object",
    "seed": "int64",
    "detector": "object",
    "precision": "object",
    "status": "object",
    "score": "float64",
    "threshold": "float64",
    "detail": "object",
    "ba": "float64",
    "asr": "float64",
    "wall_s": "float64",
    "config_hash": "object",
    "git_commit": "object",
    "versions": "object",
}


def attack_of(cfg: dict, meta: dict, attack: str) -> tuple[dict, float]:
    """The attack description (trigger, target) and training poison rate of a model. A clean
    model is compared with the first attack of ``detection.attacks`` (its trigger feeds STRIP)
    and its training data was not poisoned."""
    if meta.get("attack"):
        return meta["attack"], float(cfg["attacks"].get(attack, {}).get("poison_rate", 0.1))
    name = cfg["detection"]["attacks"][0]
    spec = cfg["attacks"][name]
    return {"trigger": spec["trigger"], "target": spec["target"]}, 0.0


def model_at(cfg: dict, model, meta: dict, precision: str, splits):
    """The model at ``precision``; the simulated ones use the cell's scheme
    (:func:`qcbench.cells.scheme_name`: ``quant.deployer_scheme``, else the attack's, else
    ``quant.default_scheme``), calibrated as the quantize stage does."""
    bits = check_precision(precision)
    if bits is None:
        return at_precision(model, precision)
    _, scheme = scheme_for(cfg, meta, bits)
    return at_precision(model, precision, scheme, splits.defender, **calibration(cfg))


def detect(
    cfg: dict, detectors: str | list[str], precision: str, data: str, model_path: str, out: str, keys: dict
) -> pd.DataFrame:
    """Run each detector of ``detectors`` (names under ``detection.settings``) on the model at
    ``precision`` and write their rows (one per detector) to one Parquet file. The quantized
    model and its BA/ASR are computed once and shared; each detector gets its own copy of the
    model and restarts the seeded generator, so its row does not depend on which detectors run
    beside it. A detector that raises (e.g. a gradient-based one on PyTorch's dynamically
    quantized modules) is recorded as ``could_not_run`` with the error, never as
    ``not_detected``."""
    names = [detectors] if isinstance(detectors, str) else list(detectors)
    seed = int(keys["seed"])
    det_cfg = cfg["detection"]
    unknown = [d for d in names if d not in det_cfg["settings"]]
    if unknown:
        raise KeyError(f"detection.settings: no detector named {unknown} (known: {sorted(det_cfg['settings'])})")
    splits = load_prepared(data)
    model, meta = io.load_model(model_path, "cpu")
    atk, rate = attack_of(cfg, meta, keys["attack"])
    trigger = create_trigger(atk["trigger"], splits.meta["image_size"])
    inputs = DetectionInputs(splits, trigger, int(atk["target"]), rate, seed)
    t0 = time.perf_counter()
    qmodel = model_at(cfg, model, meta, precision, splits)
    n_eval = det_cfg.get("eval_images")
    test = splits.test if not n_eval else splits.test.subset(torch.arange(min(n_eval, len(splits.test))))
    res = evaluate_model(qmodel, test, trigger, inputs.target, cfg["eval"]["batch_size"])
    shared_s = time.perf_counter() - t0
    provenance_cols = {
        "config_hash": provenance.config_hash(cfg),
        "git_commit": provenance.git_commit(),
        "versions": provenance.versions(),
    }
    rows = []
    for detector in names:
        params = copy.deepcopy(det_cfg["settings"][detector])
        method = params.pop("method", detector)
        torch.manual_seed(seed)
        t1 = time.perf_counter()
        det = create_detector(method, params)
        try:
            verdict = det.detect(copy.deepcopy(qmodel), inputs)
            status, score, thr, detail = verdict.status, verdict.score, verdict.threshold, verdict.detail
        except Exception as err:  # noqa: BLE001  (any failure is "could not run", with the error)
            traceback.print_exc(file=sys.stderr)
            status, score, thr = "could_not_run", math.nan, math.nan
            detail = {"error": f"{type(err).__name__}: {err}", "gradient_based": det.gradient_based}
        rows.append(
            {
                "dataset": keys["dataset"],
                "arch": keys["arch"],
                "attack": keys["attack"],
                "seed": seed,
                "detector": detector,
                "precision": precision,
                "status": status,
                "score": float(score),
                "threshold": float(thr),
                "detail": json.dumps(detail, sort_keys=True, default=str),
                "ba": res["ba"],
                "asr": res["asr"],
                # this detector's own time plus the shared quantization and evaluation
                "wall_s": shared_s + time.perf_counter() - t1,
            }
            | provenance_cols
        )
    df = pd.DataFrame(rows).astype(DETECTION_COLUMNS)
    check_detection(df, out)
    io.write_parquet(df, out)
    return df


def check_detection(df: pd.DataFrame, source: str) -> None:
    from qcbench.detection.base import STATUSES

    missing = [c for c in DETECTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: detection file lacks columns {missing}")
    bad = sorted(set(df.status) - set(STATUSES))
    if bad:
        raise ValueError(f"{source}: unknown status {bad}; expected one of {STATUSES}")


def collate(paths: list[str], out: str) -> pd.DataFrame:
    frames = []
    for p in paths:
        df = pd.read_parquet(p)
        check_detection(df, p)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(DETECTION_COLUMNS))
    df = df.sort_values(["dataset", "arch", "attack", "detector", "precision", "seed"], ignore_index=True)
    io.write_parquet(df, out)
    return df
