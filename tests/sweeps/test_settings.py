"""Settings, labels, the batch axis, and the n=1 / edge cases of the report."""

from __future__ import annotations

import json

import pytest

from gn_detect.sweeps import collect_runs, component_label, find_run_dirs, label_matches, write_sweep_report
from gn_detect.sweeps.collect import batch_mode, normalize_norm, read_bn_group_size
from gn_detect.sweeps.collect import run_images_per_group as images_per_group

from .fabricate import make_config, write_run

FINAL = {"AP": 35.0, "AP50": 55.0, "label_precision": 0.7, "label_recall": 0.6, "box_precision": 0.5,
         "box_recall": 0.4, "ims_per_sec": 10.0, "peak_mem_mb": 1000.0}


def comps(bb, fpn, head, ws=(False, False, False), pn=False):
    return ((bb, ws[0]), (fpn, ws[1]), (head, ws[2], pn))


def test_normalize_and_component_label():
    assert normalize_norm("gn_ws", False) == ("gn", True)
    assert normalize_norm(None, None) == ("none", False)
    assert normalize_norm("GN", True) == ("gn", True)
    assert component_label(comps("affine", "gn", "gn")) == "affine/gn/gn"
    assert component_label(comps("gn", "gn", "gn", ws=(True, True, True), pn=True)) == "gn+ws/gn+ws/gn+ws+pn"


@pytest.mark.parametrize("name,c,ok", [
    ("bn", comps("bn", "none", "none"), True),
    ("affine", comps("affine", "none", "none"), True),  # frozen BN baseline
    ("frozenbn", comps("affine", "none", "none"), True),
    ("bn", comps("affine", "none", "none"), False),  # the table's affine tokens: affine, frozenbn, frozen
    ("gn", comps("gn", "gn", "gn"), True),
    ("gn_ws", comps("gn", "gn", "gn", ws=(True, True, True)), True),
    ("gn_ws", comps("gn", "gn", "gn"), False),  # no WS used
    ("gn", comps("gn", "gn", "gn", ws=(True, False, False)), False),  # WS not named
    ("gn_fpn_head", comps("affine", "gn", "gn"), True),
    ("gn_fpn_head", comps("affine", "gn", "none"), False),
    ("gn_fpn_head", comps("affine", "gn", "bn"), False),  # bn not named
    ("bn", comps("gn", "gn", "gn"), False),
    ("gn_ws_pn", comps("gn", "gn", "gn", ws=(True, True, True), pn=True), True),
    ("gn_ws", comps("gn", "gn", "gn", ws=(True, True, True), pn=True), False),
])
def test_label_matches(name, c, ok):
    assert label_matches(name, c) is ok


def test_batch_axis_and_mode():
    c = comps("bn", "none", "none")
    assert images_per_group(c, 16, None, 1) == 16
    assert images_per_group(c, 16, 4, 1) == 4
    assert images_per_group(comps("syncbn", "none", "none"), 2, None, 8) == 16
    assert batch_mode(16, 4, 1) == "emulated"
    assert batch_mode(16, 16, 1) == "single process"
    assert batch_mode(16, None, 1) == "single process"
    assert batch_mode(2, None, 4) == "real processes"
    assert batch_mode(8, 2, 4) == "real processes + emulated"


def test_bn_group_size_from_model_norm_opts():
    """model.<part>.norm_opts.bn_group_size of the bn components, null inheriting
    model.norm_opts.bn_group_size, reduced as the config check reduces them; without bn: None."""
    bn_head = {"components": {"head": ("bn", False)}}
    cases = [
        # (make_config kwargs, expected size, note expected)
        ({"bn_group_size": 4}, 4, False),
        ({"part_bn_group_size": {"backbone": 2}}, 2, False),
        ({"bn_group_size": 4, "part_bn_group_size": {"backbone": 2}}, 2, False),
        ({"bn_group_size": 4, "part_bn_group_size": {"fpn": 2}}, 4, False),  # fpn has no bn: override unused
        ({"bn_group_size": 4, "part_bn_group_size": {"head": 2}, **bn_head}, 2, True),  # backbone 4, head 2
        ({"part_bn_group_size": {"head": 2}, **bn_head}, 2, True),  # backbone: the whole device batch
        ({"bn_group_size": 0}, None, False),  # not a group size
    ]
    for kwargs, size, noted in cases:
        cfg = make_config("bn", 0, 8, **kwargs)
        got, note = read_bn_group_size(cfg)
        assert got == size, kwargs
        assert (note is not None) == noted, (kwargs, note)
    cfg = make_config("bn", 0, 8, part_bn_group_size={"head": 2}, **bn_head)
    assert read_bn_group_size(cfg)[1] == (
        "bn_group_size differs by component (backbone=device batch, head=2): the smallest, 2, is the batch axis")
    # GN ignores bn_group_size: no ghost-batch component, no group (validate's answer too)
    assert read_bn_group_size(make_config("gn", 0, 8, bn_group_size=2)) == (None, None)


def test_per_component_group_size_sets_the_batch_axis(tmp_path):
    write_run(tmp_path / "a", make_config("bn", 0, 8, part_bn_group_size={"backbone": 2}), final=FINAL)
    write_run(tmp_path / "b", make_config("bn", 1, 8, part_bn_group_size={"backbone": 2}), final=FINAL)
    res = write_sweep_report(tmp_path, quiet=True)
    [row] = res["rows"]
    assert (row["ims_per_group"], row["bn_group_size"], row["mode"], row["n"]) == (2, 2, "emulated", 2)


def test_find_run_dirs_skips_hidden_and_nested(tmp_path):
    write_run(tmp_path / "a", make_config("gn", 0, 2), final=FINAL)
    write_run(tmp_path / "a" / "checkpoints" / "x", make_config("gn", 1, 2), final=FINAL)  # inside a run
    write_run(tmp_path / "b" / "c", make_config("gn", 1, 2), final=FINAL)
    assert [p.relative_to(tmp_path).as_posix() for p in find_run_dirs(tmp_path)] == ["a", "b/c"]


def test_relabel_when_components_disagree(tmp_path):
    # "gn" used for two different component sets (e.g. a command-line override of the head norm)
    write_run(tmp_path / "0", make_config("gn", 0, 2), final=FINAL)
    write_run(tmp_path / "1", make_config("gn", 0, 2, components={"head": (None, False)}), final=FINAL)
    # a name that does not describe its components at all
    write_run(tmp_path / "2", make_config("bn", 0, 2, components={"backbone": ("gn", True)}), final=FINAL)
    # a PN head under a name without "pn"
    write_run(tmp_path / "3", make_config("gn_fpn_head", 0, 2, act="pn_relu"), final=FINAL)
    labels = {r.rel_dir: r.label for r in collect_runs(tmp_path)}
    assert labels == {"0": "gn/gn/gn", "1": "gn/gn/none", "2": "gn+ws/none/none", "3": "affine/gn/gn+pn"}


def test_single_seed_and_real_processes(tmp_path):
    """n=1: std n/a, comparison not judged; world size splits settings and the AP lines."""
    write_run(tmp_path / "bn_1proc", make_config("bn", 0, 2), final=FINAL)
    write_run(tmp_path / "bn_4proc", make_config("bn", 0, 2, world_size=4), final={**FINAL, "AP": 36.0},
              world_size=4)
    write_run(tmp_path / "gn", make_config("gn", 0, 2), final={**FINAL, "AP": 20.0, "peak_mem_mb": None})
    res = write_sweep_report(tmp_path, tmp_path / "out", quiet=True)
    rows = res["rows"]
    assert [(r["setting"], r["world_size"], r["mode"]) for r in rows] == [
        ("bn", 1, "single process"), ("bn", 4, "real processes"), ("gn", 1, "single process")]
    assert all(r["n"] == 1 and r["AP_std"] is None for r in rows)
    assert rows[2]["peak_mem_mb_mean"] is None
    assert {c["verdict"] for c in res["comparisons"]} == {"not judged"}
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "single seed (n=1): no seed spread can be judged" in text
    assert "not judged (n=1, no spread)" in text
    assert "exceeds the seed spread" not in text.split("In all:")[1]
    figs = json.loads((tmp_path / "out" / "figures.json").read_text())
    names = sorted(s["name"] for s in figs["ap_vs_batch"]["series"])
    # two optimizer batches (2 and 8 images per step); in the 2-image group bn has one group size,
    # so gn is a point at its images per device, not a band
    assert names == ["bn (real processes)", "bn (single process)", "gn"]
    assert "never compared" in text and "8 images per step (solver.ims_per_batch)" in text
    md = (tmp_path / "out" / "summary.md").read_text()
    # n=1: no ±; an AP already written in percent (above 1) is shown as written, one decimal
    assert "real processes" in md and "| 35.0 |" in md and "± n/a" not in md


def test_excluded_and_unknown_runs(tmp_path):
    write_run(tmp_path / "ok", make_config("gn", 0, 2), final=FINAL)
    write_run(tmp_path / "no_final", make_config("gn", 1, 2))  # done, but no final record
    write_run(tmp_path / "never", make_config("gn", 2, 2), status=False, train_iters=())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("seed: [unclosed\n")
    res = write_sweep_report(tmp_path, quiet=True)
    assert res["counts"] == {"done": 1, "failed": 0, "unfinished": 1, "excluded": 2, "runs": 4, "settings": 1}
    excluded = {e["run_dir"]: e["error"] for e in res["excluded"]}
    assert "no final record" in excluded["no_final"]
    assert excluded["broken"].startswith("config.yaml:")
    assert res["unfinished"][0]["run_dir"] == "never" and res["unfinished"][0]["state"] == "unknown"
    md = (tmp_path / "summary.md").read_text()
    assert "## Excluded runs" in md and "`broken`" in md and "`never`" in md


def test_empty_sweep(tmp_path):
    res = write_sweep_report(tmp_path, quiet=True)
    assert res["counts"]["runs"] == 0 and res["rows"] == []
    assert (tmp_path / "ap_vs_batch.png").is_file()
    assert json.loads((tmp_path / "figures.json").read_text())["ap_vs_batch"]["series"] == []
    assert len((tmp_path / "summary.csv").read_text().splitlines()) == 1  # header only
    assert "No finished runs" in (tmp_path / "comparison.md").read_text()


def test_config_difference_between_seeds_is_noted(tmp_path):
    a = make_config("gn", 0, 2)
    b = make_config("gn", 1, 2)
    b["solver"]["base_lr"] = 0.02  # not part of the setting key, but not a seed either
    write_run(tmp_path / "a", a, final=FINAL)
    write_run(tmp_path / "b", b, final=FINAL)
    res = write_sweep_report(tmp_path, quiet=True)
    assert len(res["rows"]) == 1 and res["rows"][0]["n"] == 2
    assert res["rows"][0]["notes"] == ["config differs between seeds in: solver.base_lr"]
    assert "solver.base_lr" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("overrides", [
    ["norm=bn", "model.norm_opts.bn_group_size=2"],
    ["norm=bn", "model.norm_opts.bn_group_size=4", "model.head.norm_opts.bn_group_size=2"],
    ["norm=bn", "model.backbone.norm_opts.bn_group_size=4"],  # fpn, head: the whole device batch
    ["norm=bn"],
    ["norm=gn", "model.norm_opts.bn_group_size=2"],  # no ghost-batch norm: the option is unused
    ["norm=gn_fpn_head", "model.backbone.norm=bn", "model.norm_opts.bn_group_size=4"],
])
def test_bn_group_size_agrees_with_the_config_check(overrides):
    """The report's images per BN group is the config check's (validate.resolve_batch) on composed
    configs, as config.yaml holds them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from gn_detect.config import resolve_batch
    from gn_detect.engine.launch import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    expected = resolve_batch(cfg, 1).bn_group_size
    assert read_bn_group_size(OmegaConf.to_container(cfg, resolve=True))[0] == expected
