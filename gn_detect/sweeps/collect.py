"""Finding and reading run folders, and deciding which *setting* each run belongs to.

A run folder is any folder under the sweep folder that holds a ``config.yaml`` (see
docs/design.md, "run folder"), or only Hydra's records of a job (``.hydra/``, ``launch.log``): a
run that never started (its settings are read from ``.hydra/config.yaml``). Hidden folders
(``.hydra``, ``.git``...) are not searched and the search does not descend into a run folder once
found (its ``checkpoints/``, ``tb/`` are not runs).

A *setting* is everything but the seed; concretely the key is

    (label, components, images per normalization group, images per device,
     world size, solver.ims_per_batch, solver.max_iter)

where ``label`` is the norm preset name (``norm.name``) when the per-component norms agree
with it, else a derived ``backbone/fpn/head`` label such as ``affine/gn/gn+pn`` (see
:func:`assign_labels` and docs/sweeps.md).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from gn_detect.config.validate import bn_group_size, images_per_group
from gn_detect.runs import RunFolder, flatten, load_status, owner_gone
from gn_detect.runs.keys import setting_neutral
from gn_detect.runs.layout import CONFIG, HYDRA, LAUNCH_LOG
from gn_detect.runs.records import read_records
from gn_detect.norms import NormSpec, canonical_name, norm_names, norm_spec, resolve_norm, split_norm_name

COMPONENTS = ("backbone", "fpn", "head")

# Keys of the "final" metrics record that the summary aggregates (in table order).
METRICS = (
    "AP",
    "AP50",
    "label_recall",
    "label_precision",
    "label_baseline_precision",  # every class in every image (docs/metrics.md)
    "box_recall",
    "box_precision",
    "ims_per_sec",
    "peak_mem_mb",
)

@dataclass
class Run:
    """Everything the report needs from one run folder."""

    run_dir: Path
    rel_dir: str
    state: str  # "done" | "failed" | "running" | "interrupted" | "crashed" | "not started" | "unknown" | "unreadable"
    error: str | None = None
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    seed: int | None = None
    norm_name: str | None = None
    components: tuple = ()  # ((norm, ws), (norm, ws), (norm, ws, pn)) backbone/fpn/head
    ims_per_device: int | None = None
    bn_group_size: int | None = None
    ims_per_group: int | None = None
    world_size: int = 1
    ims_per_batch: int | None = None
    max_iter: int | None = None
    final: dict | None = None
    train: list = field(default_factory=list)  # [(iter, loss)]
    last_iter: int | None = None  # the last iteration index in metrics.jsonl (records every log.period)
    iters_done: int | None = None  # completed iterations: status.json's count, else last_iter + 1
    label: str | None = None  # filled by assign_labels
    notes: list = field(default_factory=list)

    @property
    def mode(self) -> str:
        return batch_mode(self.ims_per_device, self.bn_group_size, self.world_size)

    @property
    def setting_key(self) -> tuple:
        return (
            self.label or "",
            self.components,
            _sort_int(self.ims_per_group),
            _sort_int(self.ims_per_device),
            self.world_size,
            _sort_int(self.ims_per_batch),
            _sort_int(self.max_iter),
        )


def _sort_int(v: int | None) -> int:
    return -1 if v is None else int(v)


# --------------------------------------------------------------------------------------------
# discovery and reading
# --------------------------------------------------------------------------------------------


def find_run_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """All run folders under ``sweep_dir`` (including itself), sorted, without nested ones: those
    with a config.yaml and those with only Hydra's records (never started)."""
    root = Path(sweep_dir)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if CONFIG in filenames or HYDRA in dirnames or LAUNCH_LOG in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run's sub-folders are not runs
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _as_int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f)


def _as_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        return None
    return obj if isinstance(obj, dict) else {"_value": obj}


def read_metrics(path: Path) -> tuple[list[tuple[int, float]], list[dict], dict | None, int]:
    """(train [(iter, loss)], eval records, last final record, number of unreadable lines)."""
    records, bad = read_records(path)
    train: list[tuple[int, float]] = []
    evals: list[dict] = []
    final: dict | None = None
    for rec in records:
        kind = rec.get("type")
        if kind == "train":
            it = _as_int(rec.get("iter"))
            if it is not None:
                train.append((it, _as_float(rec.get("loss"))))
        elif kind == "eval":
            evals.append(rec)
        elif kind == "final":
            final = rec
    return train, evals, final, bad


def _spec(norm: str) -> NormSpec | None:
    """The table entry of a component's norm; None for a name this process does not know (a norm
    registered only in the training process): the report then shows the name as written."""
    try:
        return norm_spec(norm)
    except ValueError:
        return None


def normalize_norm(norm: Any, ws: Any) -> tuple[str, bool]:
    """``(gn_ws, False) -> (gn, True)``; null/empty -> ``none`` (the norm table's
    spelling, :func:`gn_detect.norms.split_norm_name`)."""
    use_ws = bool(ws) if ws is not None else False
    name = canonical_name(None if norm in ("", False) else norm)
    if _spec(name) is None:
        return name, use_ws
    base, named_ws = split_norm_name(name)
    return base, use_ws or named_ws


def uses_batch_stats(components: tuple) -> bool:
    """Whether some component's norm takes statistics over the images of a batch (its results then
    depend on images per group); an unknown norm counts as batch-dependent (never a reference)."""
    return any(_spec(c[0]) is None or _spec(c[0]).batch_stats for c in components)


def _components(cfg: dict) -> tuple:
    comps = []
    for c in COMPONENTS:
        norm, ws = normalize_norm(_get(cfg, f"model.{c}.norm"), _get(cfg, f"model.{c}.ws"))
        comps.append((norm, ws))
    act = str(_get(cfg, "model.head.act", "relu") or "relu").lower()
    pn = act.startswith("pn")
    comps[2] = (comps[2][0], comps[2][1], pn)
    return tuple(comps)


def batch_mode(ims_per_device: int | None, bn_group_size: int | None, world_size: int) -> str:
    emulated = bn_group_size is not None and ims_per_device is not None and bn_group_size < ims_per_device
    real = world_size > 1
    if real and emulated:
        return "real processes + emulated"
    if real:
        return "real processes"
    if emulated:
        return "emulated"
    return "single process"


def _group_size(v: Any) -> int | None:
    n = _as_int(v)
    return n if n is not None and n > 0 else None


def read_bn_group_size(cfg: dict) -> tuple[int | None, str | None]:
    """(images per BN statistics group, note) of a run config; None: the whole device batch.

    The config's own rule: each ghost-batch component's ``bn_group_size`` from
    :func:`gn_detect.norms.resolve_norm` (``model.<part>.norm_opts``, null inheriting
    ``model.norm_opts``), reduced by :func:`gn_detect.config.validate.bn_group_size` (the smallest
    set). No ghost-batch component: None. When those components disagree the note says so.
    """
    model = _get(cfg, "model", {})
    per: dict[str, int | None] = {}
    unread = []
    for part in COMPONENTS:
        try:
            resolved = resolve_norm(model, part)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand-made or older config
            unread.append(f"model.{part} ({type(e).__name__}: {e})")
            continue
        if resolved.spec.ghost_batch:
            per[part] = _group_size(resolved.bn_group_size)
    smallest = bn_group_size(per)
    if unread:
        return smallest, f"bn_group_size not read from {', '.join(unread)}"
    if len(set(per.values())) <= 1:
        return smallest, None
    listed = ", ".join(f"{part}={'device batch' if v is None else v}" for part, v in per.items())
    return smallest, f"bn_group_size differs by component ({listed}): the smallest, {smallest}, is the batch axis"


def run_images_per_group(components: tuple, ims_per_device: int | None, bn_group_size: int | None,
                      world_size: int) -> int | None:
    """The batch axis, by the config's rule (:func:`gn_detect.config.validate.images_per_group`)."""
    cross = any(_spec(c[0]) is not None and _spec(c[0]).cross_rank for c in components)
    return images_per_group(bn_group_size, ims_per_device, world_size, cross)


def _read_state(run: Run, started: bool) -> dict | None:
    """``run.state`` and ``run.error`` from status.json (``started``: the folder has a config.yaml,
    not only Hydra's records); returns the status (None without one)."""
    run_dir = run.run_dir
    try:
        status = load_status(run_dir)
    except Exception as e:  # noqa: BLE001
        status = {"state": "unknown", "error": f"status.json unreadable: {type(e).__name__}: {e}"}
    if status is None and not started:
        run.state = "not started"
        run.error = (f"never started: the folder holds only Hydra's records ({HYDRA}/, {LAUNCH_LOG}); the sweep "
                     "ended before this job ran; rerun the same command to run it")
    elif status is None:
        run.state, run.error = "unknown", "no status.json (never started?)"
    else:
        st = str(status.get("state") or "unknown").lower()
        run.state = st if st in ("done", "failed", "running", "interrupted") else "unknown"
        err = status.get("error")
        run.error = None if err in (None, "") else str(err)
        if run.state == "running" and owner_gone(status):
            run.state = "crashed"
            run.error = (f"process {status.get('pid')} on {status.get('host')} is gone but status.json says running "
                         "(killed or crashed); rerun the same command to resume")
    return status


def load_run(run_dir: Path, sweep_dir: Path) -> Run:
    try:
        rel = run_dir.relative_to(sweep_dir).as_posix() or "."
    except ValueError:
        rel = str(run_dir)
    run = Run(run_dir=run_dir, rel_dir=rel, state="unknown")
    started = RunFolder(run_dir).config.exists()

    try:  # a job that never started: Hydra's composition (unresolved: interpolations read as unknown)
        with open(RunFolder(run_dir).config if started else run_dir / HYDRA / CONFIG, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict):
            raise ValueError("config.yaml is not a mapping")
    except Exception as e:  # noqa: BLE001 - any unreadable config is reported, not raised
        run.state = "unreadable"
        run.error = f"config.yaml: {type(e).__name__}: {e}"
        return run
    run.config = cfg

    try:
        run.env = _read_json(RunFolder(run_dir).env) or {}
    except Exception as e:  # noqa: BLE001
        run.env = {}
        run.notes.append(f"env.json unreadable ({type(e).__name__})")
    ws = _as_int(run.env.get("world_size"))
    if ws is None:
        ws = _as_int(_get(cfg, "world_size")) or 1
        run.notes.append("world size not in env.json: assumed %d" % ws)
    run.world_size = max(1, ws)

    run.seed = _as_int(_get(cfg, "seed"))
    name = _get(cfg, "norm.name")
    run.norm_name = None if name in (None, "") else str(name)
    run.components = _components(cfg)
    run.ims_per_batch = _as_int(_get(cfg, "solver.ims_per_batch"))
    run.max_iter = _as_int(_get(cfg, "solver.max_iter"))
    run.ims_per_device = _as_int(_get(cfg, "data.ims_per_device"))
    if run.ims_per_device is None and run.ims_per_batch is not None:
        run.ims_per_device = run.ims_per_batch // run.world_size
        run.notes.append("data.ims_per_device missing: solver.ims_per_batch / world size used")
    if run.ims_per_batch is None and run.ims_per_device is not None:  # null: derived, as the config check does
        run.ims_per_batch = run.ims_per_device * run.world_size
    run.bn_group_size, note = read_bn_group_size(cfg)
    if note:
        run.notes.append(note)
    run.ims_per_group = run_images_per_group(run.components, run.ims_per_device, run.bn_group_size,
                                         run.world_size)

    status = _read_state(run, started)

    try:
        run.train, _evals, run.final, bad = read_metrics(RunFolder(run_dir).metrics)
    except Exception as e:  # noqa: BLE001
        run.train, run.final, bad = [], None, 0
        run.notes.append(f"metrics.jsonl unreadable ({type(e).__name__}: {e})")
    if bad:
        run.notes.append(f"{bad} unreadable line(s) in metrics.jsonl")
    iters = [it for it, _ in run.train]
    if run.final is not None and _as_int(run.final.get("iter")) is not None:
        iters.append(_as_int(run.final.get("iter")))
    run.last_iter = max(iters) if iters else None
    done = _as_int((status or {}).get("iteration"))
    run.iters_done = done if done is not None else (None if run.last_iter is None else run.last_iter + 1)
    if run.state == "unknown" and status is None and run.final is not None:
        run.error = "no status.json, although metrics.jsonl has a final record"
    return run


def metric_values(run: Run) -> dict[str, float]:
    fin = run.final or {}
    return {k: _as_float(fin.get(k)) for k in METRICS}


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

def _token_norms() -> dict[str, set[str]]:
    """Run-name word -> the component norms it stands for, from the norm table's ``tokens`` (read
    on each call: a norm registered later is known). A ``ws`` name (``gn_ws``) is its base norm
    plus WS, so it adds nothing of its own."""
    out: dict[str, set[str]] = {}
    for name in norm_names():
        spec = norm_spec(name)
        if not spec.ws:
            for token in spec.tokens:
                out.setdefault(token, set()).add(name)
    return out


def _may_go_unnamed(norm: str) -> bool:
    """A component norm that a preset name need not mention: one that does not normalize (no
    norm, the frozen-BN affine default)."""
    spec = _spec(norm)
    return spec is not None and not spec.normalizes


def component_label(components: tuple) -> str:
    """``affine/gn/gn+ws+pn`` -- backbone/fpn/head, each norm as the table labels it; ``+ws``
    weight standardization, ``+pn`` a PN activation in the head."""
    parts = []
    for i, comp in enumerate(components):
        spec = _spec(comp[0])
        s = spec.label if spec is not None and spec.label else comp[0]
        if comp[1]:
            s += "+ws"
        if i == 2 and len(comp) > 2 and comp[2]:
            s += "+pn"
        parts.append(s)
    return "/".join(parts)


def label_matches(name: str, components: tuple) -> bool:
    """Whether the preset name ``name`` is a fair description of ``components``."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    if not tokens:
        return False
    token_norms = _token_norms()
    used = {c[0] for c in components}
    # every norm the name mentions is used somewhere
    for t in tokens:
        if t in token_norms and not (token_norms[t] & used):
            return False
    # every norm used (other than those that may go unnamed) is mentioned
    mentioned = set().union(*(token_norms[t] for t in tokens if t in token_norms))
    if any(n not in mentioned and not _may_go_unnamed(n) for n in used):
        return False
    # "ws" in the name <=> some component uses WS; same for "pn" and the head activation
    if ("ws" in tokens) != any(c[1] for c in components):
        return False
    has_pn = len(components) > 2 and len(components[2]) > 2 and bool(components[2][2])
    if any(t.startswith("pn") for t in tokens) != has_pn:
        return False
    # "fpn" / "head" in the name: that component has a norm
    no_norm = canonical_name(None)
    if "fpn" in tokens and components[1][0] == no_norm:
        return False
    if "head" in tokens and components[2][0] == no_norm:
        return False
    return True


def assign_labels(runs: Iterable[Run]) -> None:
    """Set ``run.label`` for every readable run (deterministic; see docs/sweeps.md).

    The preset name is kept when it matches the components (:func:`label_matches`) and all
    runs carrying that name in the sweep share one component set; otherwise the derived
    ``backbone/fpn/head`` label is used.
    """
    runs = [r for r in runs if r.state != "unreadable"]
    comps_by_name: dict[str, set] = {}
    for r in runs:
        if r.norm_name:
            comps_by_name.setdefault(r.norm_name, set()).add(r.components)
    for r in runs:
        derived = component_label(r.components)
        if r.norm_name and len(comps_by_name[r.norm_name]) == 1 and label_matches(r.norm_name, r.components):
            r.label = r.norm_name
        else:
            r.label = derived
            if r.norm_name and r.norm_name != derived:
                why = ("several component sets share this name"
                       if len(comps_by_name[r.norm_name]) > 1 else "components do not match the name")
                r.notes.append(f"norm.name {r.norm_name!r} relabelled {derived!r}: {why}")


def config_differences(runs: list[Run]) -> list[str]:
    """Flattened config keys (other than seeds, names and paths) that differ among ``runs``."""
    if len(runs) < 2:
        return []
    flats = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flats))
    out = []
    for k in keys:
        if setting_neutral(k):
            continue
        vals = {json.dumps(f.get(k, "<missing>"), sort_keys=True, default=str) for f in flats}
        if len(vals) > 1:
            out.append(k)
    return out


def collect_runs(sweep_dir: str | os.PathLike) -> list[Run]:
    sweep = Path(sweep_dir)
    runs = [load_run(d, sweep) for d in find_run_dirs(sweep)]
    assign_labels(runs)
    return runs
