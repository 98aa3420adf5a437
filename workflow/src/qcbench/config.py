"""Configuration checks: the JSON schema (``qcbench/schemas/config.schema.yaml``) plus what a
schema cannot know — registry names, cross references and data paths. Every problem is
reported with the config key and value at fault, before any job runs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import yaml

from qcbench.package_data import CONFIG_SCHEMA as SCHEMA

#: the checkout's config folder: ``config.yaml`` (the paper's setting, complete: every key the
#: workflow reads, or the method's default) and ``local.yaml`` (the local default's differences).
#: An installed package outside a checkout reads ``config/`` of the working directory instead.
CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
PAPER = CONFIG_DIR / "config.yaml"
LOCAL = CONFIG_DIR / "local.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem found."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def schema_errors(cfg: dict, schema_path: str | Path = SCHEMA) -> list[str]:
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    out = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        key = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)'", err.message.split("(")[-1])
            out.append(f"config key '{key}': unknown key(s) {', '.join(map(repr, extra))}")
        elif err.validator == "required":
            out.append(f"config key '{key}': {err.message}")
        else:
            out.append(f"config key '{key}': value {err.instance!r} is invalid: {err.message}")
    return out


def _named(cfg: dict, kind: str) -> list[tuple[str, str]]:
    """(config key, name) of each attack or defense the run and the ablations use, first key only."""
    from qcbench.plan import referenced

    seen: dict[str, str] = {}
    for key, name in [(f"run.{kind}.{i}", n) for i, n in enumerate(cfg["run"][kind])] + referenced(cfg, kind):
        seen.setdefault(name, key)
    return [(key, name) for name, key in seen.items()]


def _init_errors(cfg: dict, name: str, init: str) -> list[str]:
    """An attack's ``init``: a named starting attack must exist, not lead back to ``name``, and
    carry the same trigger and target."""
    from qcbench.attacks.base import BUILT_IN_INITS

    attacks, key = cfg["attacks"], f"config key 'attacks.{name}.init'"
    spec = attacks[name]
    if init in BUILT_IN_INITS:
        return []
    if init not in attacks:
        return [f"{key}: {init!r} is neither 'clean', 'scratch' nor an attack entry ({sorted(attacks)})"]
    chain = [name]
    while chain[-1] in attacks and _init(attacks, chain[-1]) not in BUILT_IN_INITS:
        chain.append(_init(attacks, chain[-1]))
        if chain[-1] in chain[:-1]:
            return [f"{key}: the init chain {' -> '.join(chain)} is a cycle"]
    src = attacks[init]
    for field in ("trigger", "target"):
        if src.get(field) != spec.get(field):
            return [
                f"{key}: attack {init!r} has {field} {src.get(field)!r}, {name!r} has {spec.get(field)!r}: "
                "a backdoored starting model must carry the same trigger and target"
            ]
    return []


def _init(attacks: dict, name: str) -> str:
    """The ``init`` of the attack entry ``name``: its own, else its method's default."""
    from qcbench.attacks import ATTACKS

    spec = attacks[name]
    method = spec.get("method", name)
    return ATTACKS.get(method).init_of(spec) if method in ATTACKS else spec.get("init", "clean")


def semantic_errors(cfg: dict, workdir: str | Path = ".") -> list[str]:
    from qcbench.attacks import ATTACKS
    from qcbench.attacks.base import BUILT_IN_INITS, unread_keys
    from qcbench.cells import ATTACKER
    from qcbench.data import DATASETS
    from qcbench.defenses import DEFENSES
    from qcbench.detection.checks import detection_errors
    from qcbench.models import MODELS
    from qcbench.plan import config_errors as ablation_errors
    from qcbench.plan import der_reference
    from qcbench.quant import SCHEMES
    from qcbench.triggers import create_trigger

    out, run = [], cfg["run"]
    for i, ds in enumerate(run["datasets"]):
        if ds not in DATASETS:
            out.append(f"config key 'run.datasets.{i}': unknown dataset {ds!r}; registered: {DATASETS.names()}")
        src = cfg["data"]["sources"].get(ds)
        if src is None:
            out.append(f"config key 'data.sources': no entry for dataset {ds!r} (listed in run.datasets)")
        elif not (Path(workdir) / src["path"]).exists() and not src.get("download", False):
            out.append(f"config key 'data.sources.{ds}.path': {src['path']!r} does not exist (and download is false)")
        if ds not in cfg["clean"]:
            out.append(f"config key 'clean': no training settings for dataset {ds!r}")
        elif "poison_fraction" in cfg["clean"][ds]:
            out.append(f"config key 'clean.{ds}.poison_fraction': the clean model is never poisoned")
    for i, arch in enumerate(run["archs"]):
        if arch not in MODELS:
            out.append(f"config key 'run.archs.{i}': unknown arch {arch!r}; registered: {MODELS.names()}")
        elif arch not in (cfg.get("archs") or {}):
            out.append(f"config key 'archs': no entry for {arch!r} (listed in run.archs; {{}} for its defaults)")
    named = _named(cfg, "attacks")
    seen = {name for _, name in named}
    for key, name in named:  # grows by the attacks named in an `init` (their models are built too)
        spec = cfg["attacks"].get(name)
        if spec is None:
            out.append(f"config key '{key}': attack {name!r} has no entry under 'attacks'")
            continue
        method = spec.get("method", name)
        if method not in ATTACKS:
            out.append(f"config key 'attacks.{name}.method': unknown attack {method!r}; registered: {ATTACKS.names()}")
        else:
            cls = ATTACKS.get(method)
            init = cls.init_of(spec)
            out += _init_errors(cfg, name, init)
            out += [f"config key 'attacks.{name}.{k}': {msg}" for k, msg in cls.param_errors(spec).items()]
            if init not in BUILT_IN_INITS and init in cfg["attacks"] and init not in seen:
                seen.add(init)
                named.append((f"attacks.{name}.init", init))
            for k, readers in unread_keys(method, spec).items():
                out.append(
                    f"config key 'attacks.{name}.{k}': attack method {method!r} does not read it "
                    f"(read by: {', '.join(readers) or 'no registered attack'})"
                )
        if "poison_fraction" in (spec.get("stage2") or {}):
            out.append(
                f"config key 'attacks.{name}.stage2.poison_fraction': only stage 1 poisons (stage1.poison_fraction)"
            )
        if "val_fraction" in (spec.get("stage1") or {}):
            out.append(
                f"config key 'attacks.{name}.stage1.val_fraction': only stage 2 selects an epoch (stage2.val_fraction)"
            )
        try:
            create_trigger(spec["trigger"], 32)
        except (TypeError, ValueError, KeyError) as err:
            out.append(f"config key 'attacks.{name}.trigger': {spec['trigger']!r} is invalid: {err}")
        if spec.get("scheme") is not None and spec["scheme"] not in SCHEMES:
            out.append(
                f"config key 'attacks.{name}.scheme': unknown scheme {spec['scheme']!r}; registered: {SCHEMES.names()}"
            )
    for key, name in _named(cfg, "defenses"):
        spec = cfg["defenses"].get(name)
        if spec is None:
            out.append(f"config key '{key}': defense {name!r} has no entry under 'defenses'")
        elif spec["method"] not in DEFENSES:
            out.append(
                f"config key 'defenses.{name}.method': unknown defense {spec['method']!r}; "
                f"registered: {DEFENSES.names()}"
            )
        else:
            params = {k: v for k, v in spec.items() if k not in ("method", "scheme")}
            if "scheme" in spec and spec["scheme"] not in SCHEMES and spec["scheme"] != ATTACKER:
                out.append(
                    f"config key 'defenses.{name}.scheme': unknown scheme {spec['scheme']!r}; "
                    f"registered: {SCHEMES.names()}, or {ATTACKER!r} (the attack's own)"
                )
            elif spec.get("scheme") is not None and der_reference(cfg, name) is None:
                s = spec["scheme"]
                out.append(
                    f"config key 'defenses.{name}.scheme': no defense entry of method 'requantize' in scheme "
                    f"{s!r}, the no-defense cell its DER is rated against; add one, e.g. "
                    f"'{s}_none: {{method: requantize, scheme: {s}}}'"
                )
            try:
                inspect.signature(DEFENSES.get(spec["method"])).bind(**params)
            except TypeError as err:
                out.append(f"config key 'defenses.{name}': {err} (defense {spec['method']!r})")
    from qcbench.backends import BACKENDS

    for i, backend in enumerate(cfg["eval"].get("backends") or []):
        if backend not in BACKENDS:
            out.append(f"config key 'eval.backends.{i}': unknown backend {backend!r}; registered: {BACKENDS.names()}")
    out += detection_errors(cfg)
    out += ablation_errors(cfg)
    for key in ("default_scheme", "deployer_scheme"):
        value = cfg["quant"].get(key)
        if value is not None and value not in SCHEMES:
            out.append(f"config key 'quant.{key}': unknown scheme {value!r}; registered: {SCHEMES.names()}")
    from qcbench.figures import config_errors as figure_errors

    out += figure_errors(cfg)
    return out


def check_config(cfg: dict, workdir: str | Path = ".", schema_path: str | Path = SCHEMA) -> dict:
    """Raise :class:`ConfigError` listing every problem; return ``cfg`` unchanged when valid. The
    entries are checked as their jobs receive them, completed with their methods' defaults."""
    import copy

    resolved = resolve_methods(copy.deepcopy(cfg))
    problems = schema_errors(resolved, schema_path)
    if not problems:
        problems = semantic_errors(resolved, workdir)
    if problems:
        raise ConfigError("invalid qcbench configuration:\n  - " + "\n  - ".join(problems))
    return cfg


def read_yaml(path: str | Path) -> dict:
    """One config file; a missing file or a YAML syntax error raises :class:`ConfigError` naming
    the file (and the line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file {where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def config_dir(workdir: str | Path | None = None) -> Path:
    """The folder holding the paper config and the local overlay: ``<workdir>/config`` when it has
    a ``config.yaml``, else the checkout's (:data:`CONFIG_DIR`)."""
    if workdir is not None and (Path(workdir) / "config" / "config.yaml").is_file():
        return Path(workdir) / "config"
    return CONFIG_DIR


def load_config(*overlays: str | Path, resolve: bool = True, workdir: str | Path | None = None) -> dict:
    """The configuration the workflow runs with, loaded as the Snakefile loads it: the paper config
    (``config/config.yaml`` of :func:`config_dir`), then each of ``overlays`` layered left to right
    (Snakemake's ``--configfile``), or, with none, the local default's ``config/local.yaml``.
    Without a paper config (an installed package outside a checkout) the overlays stand alone. Layering merges
    mappings key by key; any other value (a list, null) replaces the one below. With ``resolve``
    every attack and defense entry is completed with its method's defaults
    (:func:`resolve_methods`), as the workflow's jobs receive them."""
    folder = config_dir(workdir)
    paper, local = folder / "config.yaml", folder / "local.yaml"
    if not overlays and not local.is_file():
        raise ConfigError(f"no config file given and no local default {local}")
    cfg: dict = read_yaml(paper) if paper.is_file() else {}
    for p in overlays or (local,):
        update(cfg, read_yaml(p))
    return resolve_methods(cfg) if resolve else cfg


def update(base: dict, new: dict) -> dict:
    """Layer ``new`` over ``base`` in place, as Snakemake layers config files; return ``base``."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            update(base[k], v)
        else:
            base[k] = v
    return base


def resolve_methods(cfg: dict) -> dict:
    """Complete, in place, every attack and defense entry of a registered method with the method's
    defaults (an entry states only what differs from them); return ``cfg``. The workflow calls
    this once the config is checked, so every rule's params and script see the values a job runs
    with (a default changed in code changes them too)."""
    from qcbench.attacks import ATTACKS
    from qcbench.attacks.base import merged
    from qcbench.defenses import DEFENSES
    from qcbench.defenses.base import defaults_of

    for name, spec in (cfg.get("attacks") or {}).items():
        method = spec.get("method", name) if isinstance(spec, dict) else None
        if method in ATTACKS:
            cfg["attacks"][name] = ATTACKS.get(method).resolve(spec)
    for name, spec in (cfg.get("defenses") or {}).items():
        method = spec.get("method") if isinstance(spec, dict) else None
        if method in DEFENSES:
            cfg["defenses"][name] = merged(defaults_of(method), spec)
    return cfg
