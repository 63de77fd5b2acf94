"""A finished run, read for evaluation: its files checked as they are read, so that a
missing, corrupt or foreign file is one error naming that file; its trained model on one
device; the held-out samples it never trained on."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from ..train.records import RunDir, RunSettings, read_json, scan_metrics

# run.json fields evaluation relies on, with the least value each may take
_INT_FIELDS = {"nodes": 1, "nproc_per_node": 1, "ep": 1, "zero": 0, "micro_batch": 1,
               "grad_accum": 1, "holdout": 0, "seed": 0, "steps": 1}


def open_run(path: str | Path) -> RunDir:
    """The run directory at ``path``; an error unless ``launch`` made it (it has run.json)."""
    rd = RunDir(path)
    if not rd.exists():
        raise ConfigError(f"{path}: not a run directory (no run.json); give a directory made "
                          "by `ecdit-scale launch`")
    return rd


def read_json_file(path: Path, what: str) -> Any:
    """JSON from a file we did not write in this process; every failure names the file."""
    try:
        return read_json(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 JSON {what} (binary data?)") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply for a {what}") from None


def read_object(path: Path, what: str) -> dict[str, Any]:
    data = read_json_file(path, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} holds one JSON object, not {type(data).__name__}")
    return data


def read_settings(rd: RunDir) -> RunSettings:
    """run.json as RunSettings, with the fields evaluation uses checked for type and range."""
    data = read_object(rd.run_json, "run settings file")
    for key, least in _INT_FIELDS.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{rd.run_json}: {key} = {value!r}; must be an integer >= {least}")
    limit = data.get("data_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{rd.run_json}: data_limit = {limit!r}; must be null or an integer >= 1")
    required = RunSettings.missing_keys(data)
    if required:
        raise ConfigError(f"{rd.run_json}: missing {', '.join(required)}; not the settings "
                          "`ecdit-scale launch` writes")
    return RunSettings.from_dict(data)


def read_model_config(rd: RunDir) -> ModelConfig:
    return rd.model_config()  # load_model_config names card.yaml in its errors


def read_summary(rd: RunDir) -> dict[str, Any]:
    """summary.json, or {} while the run has not written one."""
    return read_object(rd.summary, "run summary") if rd.summary.is_file() else {}


def read_step_times(rd: RunDir) -> list[float]:
    """Seconds of each recorded optimizer step (metrics.jsonl), each finite and positive."""
    scan = scan_metrics(rd.metrics)
    # a torn last line from a kill is normal; anything else, or nothing readable, is not
    bad = scan.damaged or (scan.bad if not scan.records else [])
    if bad:
        line, text = bad[0]
        what = "not a UTF-8 JSON record (binary data?)" if "\ufffd" in text else \
            "not a JSON record with an integer step"
        raise ConfigError(f"{rd.metrics} line {line}: {what}")
    out = []
    for line, rec in enumerate(scan.records, start=1):
        value = rec.get("step_s") if isinstance(rec, dict) else None
        out.append(positive_number(value, f"{rd.metrics} line {line}: step_s"))
    return out


def positive_number(value: Any, where: str) -> int | float:
    """``value`` if it is a finite number > 0 (as it was: an int stays an int), else an error
    naming ``where``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where} = {value!r}; must be a finite number > 0")
    return value


def load_trained_model(rd: RunDir):
    """(cfg, settings, model, step) of an MoE run trained with our own MoE layers (what the
    adaptive-compute analysis reads)."""
    cfg, s = read_model_config(rd), read_settings(rd)
    if not cfg.ffn.is_moe:
        raise ConfigError(f"{rd.path}: {cfg.name} is dense; adaptive compute needs an MoE run")
    if s.tc_impl == "deepspeed":
        raise ConfigError(f"{rd.path}: trained with --tc-impl deepspeed (DeepSpeed's own MoE "
                          "layer); adaptive analyses runs of our ExpertChoiceMoE/TokenChoiceMoE")
    return load_run_model(rd)


def load_run_model(rd: RunDir):
    """(cfg, settings, model, step) with the weights of the run's last complete checkpoint, in
    eval mode on the CPU."""
    from ..model import build_model
    from ..train.expert_parallel import consolidate_checkpoint

    cfg, s = read_model_config(rd), read_settings(rd)
    latest = rd.latest_checkpoint()
    if latest is None:
        named = rd.pointer()  # checkpoints/latest names one that is not usable: say why
        why = rd.checkpoint_problem(named) if named else None
        if why:
            raise ConfigError(f"{rd.checkpoints / named}: cannot read the checkpoint ({why})")
        raise ConfigError(f"{rd.path}: no complete checkpoint (checkpoints/latest); finish or "
                          "resume the run first")
    tag_dir = rd.checkpoints / latest[1]
    try:
        state = consolidate_checkpoint(tag_dir)
    except (OSError, EOFError, RuntimeError, KeyError, ValueError, TypeError, AttributeError,
            pickle.UnpicklingError) as exc:  # a deleted, empty, truncated or foreign file
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{tag_dir}: cannot read the checkpoint ({type(exc).__name__}: "
                          f"{first})") from None
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{rd.path}: checkpoint does not match {cfg.name} (missing "
                          f"{len(missing)}, unexpected {len(unexpected)} tensors)")
    model.eval()
    return cfg, s, model, latest[0]


def held_out_samples(s: RunSettings, cfg: ModelConfig):
    """The samples the run kept out of training (a CaptionedImages): its ``holdout`` split of
    its dataset (a prepared folder's: the same items by name, ``datasets.prepared``)."""
    from ..datasets.batches import run_split

    if s.data is not None:
        from ..datasets.prepared import open_prepared, prepared_splits

        return prepared_splits(open_prepared(s.data), cfg, holdout=s.holdout, seed=s.seed,
                               limit=s.data_limit).held

    return run_split(s.dataset, cfg, limit=s.data_limit, seed=s.seed, holdout=s.holdout,
                     split="held")
