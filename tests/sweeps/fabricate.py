"""Builders for fabricated run folders (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

NORM_PRESETS = {
    # name: {component: (norm, ws)}, head act
    "bn": ({"backbone": ("bn", False), "fpn": (None, False), "head": (None, False)}, "relu"),
    "gn": ({"backbone": ("gn", False), "fpn": ("gn", False), "head": ("gn", False)}, "relu"),
    "gn_ws": ({"backbone": ("gn", True), "fpn": ("gn", True), "head": ("gn", True)}, "relu"),
    "gn_fpn_head": ({"backbone": ("affine", False), "fpn": ("gn", False), "head": ("gn", False)}, "relu"),
    "syncbn": ({"backbone": ("syncbn", False), "fpn": (None, False), "head": (None, False)}, "relu"),
}


def make_config(norm_name, seed, ims_per_device, bn_group_size=None, world_size=1, max_iter=100,
                components=None, act=None, part_bn_group_size=None):
    """A run's config.yaml as the schema lays it out. bn_group_size: model.norm_opts.bn_group_size;
    part_bn_group_size: {component: model.<component>.norm_opts.bn_group_size} (unset: null)."""
    comps, default_act = NORM_PRESETS.get(norm_name, (None, "relu"))
    comps = dict(comps or {})
    comps.update(components or {})
    parts = part_bn_group_size or {}
    model = {c: {"norm": comps[c][0], "ws": comps[c][1], "norm_opts": {"bn_group_size": parts.get(c)}}
             for c in ("backbone", "fpn", "head")}
    model["head"].update(act=act or default_act, per_level_norm=None)
    model["norm_opts"] = {"num_groups": 32, "eps": 1e-5, "bn_group_size": bn_group_size, "impl": "auto"}
    return {
        "seed": seed,
        "output_dir": f"/somewhere/{norm_name}/{seed}",
        "norm": {"name": norm_name},
        "model": model,
        "data": {"ims_per_device": ims_per_device},
        "solver": {"ims_per_batch": ims_per_device * world_size, "max_iter": max_iter, "base_lr": 0.01},
    }


def write_run(run_dir: Path, config: dict, *, state="done", error=None, final=None, world_size=1,
              train_iters=(0, 20, 40, 60, 80), status=True, extra_lines=()):
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(config, f)
    (run_dir / "env.json").write_text(json.dumps(
        {"git_commit": "abc123", "torch": "2.14.1", "device": "cpu", "world_size": world_size}))
    if status:
        (run_dir / "status.json").write_text(json.dumps({"state": state, "error": error}))
    lines = []
    for i, it in enumerate(train_iters):
        loss = 2.0 / (1 + i) + 0.01 * config["seed"]
        lines.append({"type": "train", "iter": it, "loss": loss, "loss_cls": loss / 2, "loss_box": loss / 2,
                      "lr": 0.01, "ims_per_sec": 10.0})
    if final is not None:
        lines.append({"type": "eval", "iter": config["solver"]["max_iter"], "AP": final.get("AP")})
        lines.append({"type": "final", "iter": config["solver"]["max_iter"], **final})
    text = "".join(json.dumps(x) + "\n" for x in lines) + "".join(extra_lines)
    (run_dir / "metrics.jsonl").write_text(text)
    # what Hydra leaves in each job folder: must not be taken for a run
    hydra = run_dir / ".hydra"
    hydra.mkdir(exist_ok=True)
    with open(hydra / "config.yaml", "w") as f:
        yaml.safe_dump({"seed": "${oc.env:X}"}, f)
    return run_dir
