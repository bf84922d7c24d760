"""What every checkpoint says about the model in it, and the rules a resume or an evaluation
checks against it.

A checkpoint's ``description`` (gn_detect/engine/checkpoint.py) is plain data::

    {"config": the run's resolved config (dict; solver.ims_per_batch as derived),
     "model": {"backbone": {"depth", "widths", "norm", "ws", "num_groups", "eps"},
               "fpn": {"out_channels", "norm", "ws", "num_groups", "eps"},
               "head": {"num_convs", "norm", "ws", "num_groups", "eps", "per_level_norm", "act"},
               "num_classes": int, "categories": [{"id", "name"}, ...] in label order},
     "version": the gn-detect package version that wrote it,
     "data": {"train"|"val": {"file", "size", "mtime_ns", "blake2b"}} (the annotation files' fingerprints)}

``per_level_norm`` is resolved (null -> per level for bn/syncbn); ``ws`` is true for ``gn_ws``
too; the categories are the training dataset's.

Resuming (:func:`check_resume`) refuses any difference from the checkpoint's description that
would change the model, the optimizer or the data, listing every differing key in one line.
Only these keys may change when a run is resumed (``RESUME_MAY_CHANGE``, gn_detect/runs/keys.py):

* ``log.period``, ``log.progress``: how progress is printed;
* ``eval.period``, ``eval.full_reports``, ``eval.num_vis_images``: when periodic evaluations run
  and how many figures they draw (not what they compute);
* ``checkpoint.period``: how often ``last.pth`` is written;
* ``data.num_workers``: the batches depend only on (seed, iteration), not on the workers;
* ``solver.max_iter``: only a longer schedule, and only with ``solver.lr_schedule=step`` and the
  drops given in iterations (``solver.steps``), where the learning rate of the iterations
  already trained does not depend on it (``step_fractions`` and ``cosine`` move with it).

Everything else (model, solver, data, seed, eval split and tuning, ``init_weights``, ``device``...)
and the model description itself (e.g. the categories of the training data) must match, and so must
the content (size and hash) of each annotation file (a json rewritten in place is other data).
An evaluation (:func:`check_same_model`) refuses a ``run_config`` whose ``model`` section
differs from the checkpoint's (``model.backbone.weights``, ``weights_strict``, ``model.weights`` and
``weights_classes`` aside: they only say where a run's initial weights came from).
"""
from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gn_detect.checkpoint.conventions import fill_unrecorded
from gn_detect.config import ConfigError, TrainConfig
from gn_detect.io import file_fingerprint
from gn_detect.modeling.builder import model_config
from gn_detect.norms import component_norm_opts, resolve_norm
from gn_detect.runs import flatten
from gn_detect.runs.keys import RESUME_MAY_CHANGE

__all__ = [
    "RESUME_MAY_CHANGE",
    "ResumeRefusedError",
    "categories_of_dataset",
    "check_resume",
    "check_same_model",
    "config_differences",
    "describe_run",
    "model_signature",
    "package_version",
]

# Keys of the model section that do not describe the trained model (see the module docstring).
_NOT_THE_MODEL = ("model.backbone.weights", "model.backbone.weights_strict", "model.weights", "model.weights_classes")
_MISSING = "<absent>"


class ResumeRefusedError(ConfigError):
    """The run folder's checkpoint was written with settings this start would change."""


def package_version() -> str:
    """The installed gn-detect version ('unknown' when running from a checkout that is not installed)."""
    try:
        return importlib.metadata.version("gn-detect")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def categories_of_dataset(dataset: Any) -> list[dict[str, Any]]:
    """``[{"id", "name"}]`` in the dataset's label order (``label_to_cat_id``)."""
    listed = getattr(dataset, "categories", None)  # a CocoDetection's: no need to build its lazy .coco
    cats = {c["id"]: c for c in listed} if isinstance(listed, list) else dataset.coco.cats
    return [{"id": int(cid), "name": str(cats[cid].get("name", cid))} for cid in dataset.label_to_cat_id]


def _part(model: DictConfig, part: str) -> dict[str, Any]:
    """A component's norm as ``resolve_norm`` (what ``build_model`` builds) resolves it."""
    r, opts = resolve_norm(model, part), component_norm_opts(model, part)  # signature keys of every version
    out = {"norm": r.norm, "ws": r.ws, "num_groups": opts["num_groups"], "eps": opts["eps"]}
    if r.per_level is not None:
        out["per_level_norm"] = r.per_level
    return out


def model_signature(model: Mapping[str, Any] | DictConfig, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """The architecture a ``model`` config section builds for ``categories`` (module docstring)."""
    m = model_config(model)
    head = m.head
    widths = None if m.backbone.widths is None else list(m.backbone.widths)
    return {
        "backbone": {"depth": str(m.backbone.depth), "widths": widths, **_part(m, "backbone")},
        "fpn": {"out_channels": m.fpn.out_channels, **_part(m, "fpn")},
        "head": {"num_convs": head.num_convs, **_part(m, "head"), "act": head.act},
        "num_classes": len(categories),
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
    }


def describe_run(config: Mapping[str, Any], categories: list[dict[str, Any]],
                 data_files: Mapping[str, str | os.PathLike | None] | None = None) -> dict[str, Any]:
    """The ``description`` a run's checkpoints carry; ``config`` is the resolved config dict;
    ``data_files`` (role -> annotation file, e.g. train/val) are fingerprinted (``data``) so a resume
    over a changed file is refused (:func:`check_resume`)."""
    data = {role: {"file": str(p), **file_fingerprint(p)} for role, p in (data_files or {}).items()
            if p is not None and os.path.isfile(p)}
    return {"config": dict(config), "model": model_signature(config["model"], categories),
            "version": package_version(), **({"data": data} if data else {})}


def _data_differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``data file <role> <file>`` -> (what it was, what it is) for each annotation file whose content
    changed since the checkpoint was written (size or hash; a checkpoint from before fingerprints: none)."""
    old, now = saved.get("data") or {}, new.get("data") or {}
    out = {}
    for role in sorted(old.keys() & now.keys()):
        a, b = old[role], now[role]
        if (a.get("size"), a.get("blake2b")) != (b.get("size"), b.get("blake2b")):
            out[f"data file {role} {b.get('file')}"] = (f"{a.get('size')} bytes, blake2b {str(a.get('blake2b'))[:12]}",
                                                        f"{b.get('size')} bytes, blake2b {str(b.get('blake2b'))[:12]}")
    return out


def _on_schema(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config on today's schema (keys added since get their defaults); as saved if it
    no longer fits (a key was removed), so the difference is reported, not an exception."""
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(TrainConfig), dict(config)), resolve=True)
        return fill_unrecorded(merged)  # input conventions of a run that predates them: torchvision's
    except Exception:  # noqa: BLE001 - reported as differences by the caller
        return dict(config)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old value, new value) for every leaf that differs (``<absent>`` if missing)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(a.keys() | b.keys())
            if a.get(k, _MISSING) != b.get(k, _MISSING)}


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} entries]"
    text = value if value == _MISSING else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _max_iter_note(old: Any, new: Any, solver: Mapping[str, Any]) -> str | None:
    """Why a changed solver.max_iter cannot be resumed, or None when it can."""
    if not isinstance(old, int) or not isinstance(new, int) or new < old:
        return "only a longer schedule can be resumed"
    if solver.get("lr_schedule") != "step" or solver.get("step_fractions"):
        return ("the learning rate of the iterations already trained depends on it "
                "(solver.lr_schedule=cosine or solver.step_fractions)")
    return None


def check_resume(saved: Mapping[str, Any], new: Mapping[str, Any], path: str | os.PathLike, iteration: int) -> None:
    """Raises :class:`ResumeRefusedError` (one line, every differing key) unless the ``new``
    description differs from the checkpoint's ``saved`` one only where the module docstring allows.
    ``new`` without ``"model"`` compares the configs only (before the data is read)."""
    diffs = {k: v for k, v in config_differences(_on_schema(saved["config"]), _on_schema(new["config"])).items()
             if k not in RESUME_MAY_CHANGE}
    notes: dict[str, str] = {}
    if "solver.max_iter" in diffs:
        note = _max_iter_note(*diffs["solver.max_iter"], new["config"]["solver"])
        if note is None:
            del diffs["solver.max_iter"]
        else:
            notes["solver.max_iter"] = note
    described: dict[str, tuple[Any, Any]] = {}
    if "model" in new:
        explained = any(d.startswith("model.") for d in diffs)  # a model.* key explains the rest
        described = {f"model description: {k}": v for k, v in config_differences(saved["model"], new["model"]).items()
                     if k in ("num_classes", "categories") or not explained}
    changed_data = _data_differences(saved, new)
    described.update(changed_data)
    if not diffs and not described:
        return
    shown = [f"{k} ({_show(a)} -> {_show(b)}{'; ' + notes[k] if k in notes else ''})"
             for k, (a, b) in {**diffs, **described}.items()]
    fix = "use a new run folder"
    if diffs:
        fix += f", or revert {', '.join(diffs)}"
    if changed_data:
        fix += ", or restore the annotation file(s) the run started with (a resume trains on the same data)"
    elif described:
        fix += ", or train on the data (categories) and code the run started with"
    raise ResumeRefusedError(
        "resume", f"{path} (iteration {iteration}) was written with other settings than this start: "
        f"{'; '.join(shown)}", fix)


def check_same_model(ckpt_model: Mapping[str, Any], other_model: Mapping[str, Any], ckpt_path: Any,
                     other_path: Any) -> None:
    """Raises a one-line ConfigError when ``other_model`` (a run_config's ``model`` section)
    differs from the checkpoint's, apart from where the initial weights came from."""
    diffs = {k: v for k, v in config_differences(
        {"model": OmegaConf.to_container(model_config(ckpt_model), resolve=True)},
        {"model": OmegaConf.to_container(model_config(other_model), resolve=True)}).items()
        if k not in _NOT_THE_MODEL}
    if diffs:
        shown = "; ".join(f"{k} ({_show(a)} -> {_show(b)})" for k, (a, b) in diffs.items())
        raise ConfigError(
            "run_config", f"{other_path} describes another model than the checkpoint {ckpt_path}: {shown}",
            "leave run_config unset to evaluate with the checkpoint's own config, or give the config.yaml of "
            "the run that wrote the checkpoint")
