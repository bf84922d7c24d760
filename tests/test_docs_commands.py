"""Every shell command in README.md and docs/*.md is run or checked (issue 11), read at test time.

Commands: in fenced blocks tagged bash/sh/shell/console or untagged, the lines that start with
``python ``, ``torchrun ``, ``bash scripts/`` or ``.venv/bin/python `` (backslash continuations
joined, ``# comments`` dropped). Any other non-comment line of a bash block fails
``test_bash_blocks_hold_only_known_commands``: this test would not know how to check it.

Each command gets the first rule that fits (``classify``):

1. ``script``: ``bash scripts/X.sh`` -> the script exists and ``bash -n`` parses it (running it
   sets up a fresh environment, or runs this very suite).
2. ``flags``: a usage synopsis (``[--flag ...]``), a benchmark in scripts/, or a non-Hydra tool
   given a path that does not exist here -> ``--help`` exits 0 and names every ``--flag`` used.
3. ``compose``: a Hydra tool (tools/train.py, or tools/X.py with configs/X.yaml) needing what
   this machine lacks -- an absolute path that does not exist here (/data/coco, /weights/...,
   /path/to/...), a torchrun of more than MAX_LOCAL_PROCS processes, a multirun (-m: many runs),
   a training data root that does not exist here -> every run the command starts composes and
   validates (``check_command_line``, the pre-flight of train and evaluate; a study's sweep
   parameters included; other Hydra tools: their ``--cfg job``).
4. ``run``: the rest runs in a temporary launch folder, training with SHORT appended and its
   run folder inside; placeholders (``<...>``) of the other Hydra tools become this session's
   checkpoint, val images or a new output folder (``_substitute``), and tools/sweep_report.py
   reads a 2-run sweep made there.

A command no rule fits (an unknown program, a placeholder with no substitute) fails with its text.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from gn_detect.config import validate_evaluate_config, validate_train_config
from gn_detect.preflight import check_command_line

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")
DOC_FILES = ("README.md", "docs/*.md")
BASH_LANGS = ("bash", "sh", "shell", "console")
PREFIXES = ("python ", "torchrun ", "bash scripts/", ".venv/bin/python ")
MAX_LOCAL_PROCS = 2
TIMEOUT_S = 300
# a 2-iteration run on 8 + 4 synthetic images of 64 px; every key is in gn_detect/config/schema.py
SHORT = ("solver.max_iter=2", "solver.warmup_iters=1", "solver.steps=[]", "solver.step_fractions=[]",
         "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.image_size=64",
         "data.min_size_train=[64]", "data.min_size_test=64", "data.max_size=64", "eval.num_vis_images=1",
         "log.progress=log", "checkpoint.period=1000")
PLACEHOLDER = re.compile(r"<[^>]*>|^\.\.\.$")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str
    argv: tuple[str, ...]


@dataclass
class Plan:
    kind: str  # script | flags | compose | run | unknown
    reason: str
    program: str = ""
    args: list[str] = field(default_factory=list)
    procs: int = 1


def shared_data_dir() -> Path:
    return Path(os.environ.get("GN_DETECT_SHARED_DATA", REPO.parent / "shared" / "data")).absolute()


def _blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, line number, line) of every line inside a fenced block."""
    out, lang = [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if s.startswith("```"):
            lang = (s[3:].strip().split() or [""])[0].lower() if lang is None else None
            continue
        if lang is not None:
            out.append((lang, n, line))
    return out


def extract(path: Path) -> tuple[list[DocCommand], list[str]]:
    """The commands of ``path`` and the unknown lines of its bash blocks."""
    rel = path.relative_to(REPO).as_posix()
    commands, unknown, pending = [], [], None
    for lang, n, line in _blocks(path):
        if lang not in BASH_LANGS and lang != "":
            continue
        if pending is not None:
            start, text = pending
            line = text + " " + line.strip()
            n = start
        pending = (n, line.rstrip()[:-1]) if line.rstrip().endswith("\\") else None
        if pending is not None:
            continue
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith(PREFIXES):
            commands.append(DocCommand(f"{rel}:{n}", s, tuple(shlex.split(s, comments=True))))
        elif lang in BASH_LANGS:
            unknown.append(f"{rel}:{n}: {s}")
    return commands, unknown


def doc_paths() -> list[Path]:
    return [p for pattern in DOC_FILES for p in sorted(REPO.glob(pattern))]


def all_commands() -> list[DocCommand]:
    return [c for p in doc_paths() for c in extract(p)[0]]


def _torchrun(argv: list[str]) -> tuple[int, list[str]]:
    """(processes, the rest from the script on) of a torchrun command line."""
    procs, nodes, i = 1, 1, 1
    while i < len(argv) and argv[i].startswith("-"):
        opt, _, val = argv[i].partition("=")
        if not val and i + 1 < len(argv) and opt in ("--nproc_per_node", "--nproc-per-node", "--nnodes"):
            i, val = i + 1, argv[i + 1]
        if opt in ("--nproc_per_node", "--nproc-per-node"):
            procs = int(val)
        elif opt == "--nnodes":
            nodes = int(val.split(":")[-1])
        i += 1
    return procs * nodes, argv[i:]


def _missing_paths(args: list[str]) -> list[str]:
    values = [a.partition("=")[2] if "=" in a else a for a in args]
    return [v for v in values if v.startswith("/") and not Path(v).exists()]


def _data_root_missing(args: list[str]) -> bool:
    """Whether the composed data.root of a training command is a folder this machine lacks
    (shapes is generated, so never)."""
    with _shared_data_env():
        cfg = _compose("config", [a for a in args if not a.startswith("-")])
        if cfg.data.name == "shapes":
            return False
        root = Path(str(cfg.data.root)).expanduser()
    return not root.is_absolute() or not root.is_dir()


@contextlib.contextmanager
def _shared_data_env() -> Iterator[None]:
    """GN_DETECT_SHARED_DATA as the children get it (data=coco128 resolves its root from it)."""
    old = os.environ.get("GN_DETECT_SHARED_DATA")
    os.environ["GN_DETECT_SHARED_DATA"] = str(shared_data_dir())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GN_DETECT_SHARED_DATA")
        else:
            os.environ["GN_DETECT_SHARED_DATA"] = old


def _compose(config_name: str, overrides: list[str], hydra_node: bool = False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_node)


def hydra_config(program: str) -> str | None:
    """The config a Hydra tool composes: configs/config.yaml for tools/train.py, configs/<name>.yaml
    for tools/<name>.py; None for other programs."""
    if program == "tools/train.py":
        return "config"
    stem = Path(program).stem
    return stem if program.startswith("tools/") and (REPO / "configs" / f"{stem}.yaml").is_file() else None


def classify(cmd: DocCommand) -> Plan:
    """The rule a command falls under (module docstring)."""
    argv = list(cmd.argv)
    if argv[0] == "bash":
        ok = len(argv) >= 2 and argv[1].startswith("scripts/") and argv[1].endswith(".sh")
        return Plan("script", "sets up an environment or runs the suite", argv[1]) if ok else \
            Plan("unknown", "only bash scripts/<name>.sh is known")
    procs, rest = _torchrun(argv) if argv[0] == "torchrun" else (1, argv[1:])
    if not rest:
        return Plan("unknown", "no program")
    program, args = rest[0], rest[1:]
    if not re.fullmatch(r"(tools|scripts)/\w+\.py", program) or not (REPO / program).is_file():
        return Plan("unknown", f"{program} is not a tool or script of this repository")
    hydra_tool = hydra_config(program) is not None
    missing = _missing_paths(args)
    if any(a.startswith("[") for a in args):
        return Plan("flags", "a usage synopsis", program, args)
    if program.startswith("scripts/"):
        return Plan("flags", "a benchmark: minutes, some on a GPU", program, args)
    if not hydra_tool:
        if missing:
            return Plan("flags", f"needs {missing[0]}", program, args)
        return Plan("run", "a tool with everything it needs here", program, args)
    if procs > MAX_LOCAL_PROCS:
        return Plan("compose", f"{procs} processes", program, args, procs)
    if missing:
        return Plan("compose", f"needs {missing[0]}", program, args, procs)
    if "-m" in args or "--multirun" in args:
        return Plan("compose", "a multirun: many runs", program, args, procs)
    if program == "tools/train.py":
        if any(PLACEHOLDER.search(a.partition("=")[2]) for a in args):
            return Plan("unknown", "a placeholder in a training command has no substitute")
        if _data_root_missing(args):
            return Plan("compose", "its data root does not exist here", program, args, procs)
    return Plan("run", "everything it needs is here", program, args, procs)


# --------------------------------------------------------------------------- checks per kind


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
               GN_DETECT_SHARED_DATA=str(shared_data_dir()))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=str(cwd), env=child_env(), timeout=TIMEOUT_S,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _fail_text(cmd: DocCommand, plan: Plan, proc: subprocess.CompletedProcess[str]) -> str:
    return (f"{cmd.where}: `{cmd.text}` ({plan.kind}: {plan.reason}) exited {proc.returncode}:\n"
            + proc.stdout[-3000:])


def check_script(plan: Plan) -> None:
    path = REPO / plan.program
    assert path.is_file(), f"{plan.program} does not exist"
    proc = subprocess.run(["bash", "-n", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, f"bash -n {plan.program}: {proc.stdout}"


def check_flags(cmd: DocCommand, plan: Plan, cwd: Path) -> None:
    proc = run([sys.executable, REPO / plan.program, "--help"], cwd)
    assert proc.returncode == 0, _fail_text(cmd, plan, proc)
    flags = {m.group(0) for a in plan.args for m in re.finditer(r"--[\w-]+", a)}
    unknown = sorted(f for f in flags if f not in proc.stdout)
    assert not unknown, f"{cmd.where}: `{cmd.text}`: {plan.program} --help does not know {unknown}"


def _study_sweep(args: list[str]) -> list[str]:
    """A study's own sweep parameters (hydra.sweeper.params) as overrides, the command line's
    winning; [] without a study."""
    parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    if not any(ov.get_key_element().lstrip("+~") == "study" for ov in parsed):
        return []
    fixed = [ov.input_line for ov in parsed if not ov.is_sweep_override()]
    params = _compose("config", fixed, hydra_node=True).hydra.sweeper.params or {}
    given = {ov.get_key_element().lstrip("+~") for ov in parsed}
    return [f"{k}={v}" for k, v in params.items() if k not in given]


def check_compose(cmd: DocCommand, plan: Plan, cwd: Path) -> None:
    """Train and evaluate: the tools' pre-flight (compose + validate every run); other Hydra
    tools: their own ``--cfg job`` (Hydra composes the config on its schema and prints it)."""
    if plan.program not in ("tools/train.py", "tools/evaluate.py"):
        proc = run([sys.executable, REPO / plan.program, *plan.args, "--cfg", "job"], cwd)
        assert proc.returncode == 0, _fail_text(cmd, plan, proc)
        return
    if plan.program == "tools/evaluate.py":
        problem = check_command_line(CONFIG_DIR, "evaluate", plan.args, validate_evaluate_config)
    else:
        args = plan.args
        if "-m" in args or "--multirun" in args:
            args = ["-m", *_study_sweep(args), *[a for a in args if a not in ("-m", "--multirun")]]

        def validate(cfg, world_size):  # the commands shown with torchrun: their process count
            return validate_train_config(cfg, world_size=max(world_size, plan.procs))

        problem = check_command_line(CONFIG_DIR, "config", args, validate)
    assert problem is None, f"{cmd.where}: `{cmd.text}` does not compose: {problem}"


# --------------------------------------------------------------------------- running


class Session:
    """The launch folder shared by the commands that run, with a checkpoint and a sweep made on demand."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._checkpoint: Path | None = None
        self._sweep: Path | None = None

    def checkpoint(self) -> Path:
        if self._checkpoint is None:
            run_dir = self.work / "session_run"
            proc = run([sys.executable, REPO / "tools/train.py", *SHORT, f"hydra.run.dir={run_dir}"], self.work)
            assert proc.returncode == 0, f"the session's training run failed:\n{proc.stdout[-3000:]}"
            self._checkpoint = run_dir / "checkpoints" / "model_final.pth"
        return self._checkpoint

    def val_images(self) -> Path:
        """The val images of the shapes data the session's run was trained on."""
        self.checkpoint()
        return self.work / "datasets" / "shapes" / "val"

    def sweep(self) -> Path:
        if self._sweep is None:
            sweep_dir = self.work / "multirun" / "default"
            proc = run([sys.executable, REPO / "tools/train.py", "-m", "norm=bn,gn", *SHORT,
                        f"hydra.sweep.dir={sweep_dir}"], self.work)
            assert proc.returncode == 0, f"the session's sweep failed:\n{proc.stdout[-3000:]}"
            self._sweep = sweep_dir
        return self._sweep


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return Session(tmp_path_factory.mktemp("docs_commands"))


def _substitute(cmd: DocCommand, plan: Plan, session: Session, slug: str) -> list[str]:
    """The arguments with their placeholders (``<...>``, a lone ``...``) replaced: in a Hydra
    tool other than training, ``checkpoint``/``run_config``/``report`` by this session's run,
    ``input`` by its val images, ``out_dir``/``output`` by a new folder; in tools/sweep_report.py
    by this session's sweep. Fails for any other placeholder."""
    out = []
    for a in plan.args:
        key, eq, value = a.partition("=")
        if plan.program == "tools/sweep_report.py" and PLACEHOLDER.search(a):
            a = str(session.sweep())
        elif PLACEHOLDER.search(value if eq else a):
            subs = {"checkpoint": lambda: session.checkpoint(),
                    "run_config": lambda: session.checkpoint().parent.parent / "config.yaml",
                    "report": lambda: session.checkpoint().parent.parent / "report.json",
                    "input": session.val_images,
                    "out_dir": lambda: session.work / "out" / slug, "output": lambda: session.work / "out" / slug}
            assert hydra_config(plan.program) not in (None, "config") and key in subs, \
                f"{cmd.where}: `{cmd.text}`: no substitute for the placeholder in {a!r}"
            a = f"{key}={subs[key]()}"
        out.append(a)
    return out


def check_run(cmd: DocCommand, plan: Plan, session: Session, slug: str) -> None:
    args = _substitute(cmd, plan, session, slug)
    if plan.program == "tools/sweep_report.py":
        session.sweep()  # the folder the docs name (multirun/default) exists in the launch folder
    launcher = [sys.executable]
    if plan.procs > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={plan.procs}"]
    argv = [*launcher, REPO / plan.program, *args]
    run_dir = session.work / "runs" / slug
    if plan.program == "tools/train.py":
        argv += [*SHORT, f"hydra.run.dir={run_dir}"]
    proc = run(argv, session.work)
    assert proc.returncode == 0, _fail_text(cmd, plan, proc)
    if plan.program == "tools/train.py":
        assert '"state": "done"' in (run_dir / "status.json").read_text(), _fail_text(cmd, plan, proc)


COMMANDS = all_commands()


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command(cmd: DocCommand, session: Session) -> None:
    plan = classify(cmd)
    if plan.kind == "script":
        check_script(plan)
    elif plan.kind == "flags":
        check_flags(cmd, plan, session.work)
    elif plan.kind == "compose":
        check_compose(cmd, plan, session.work)
    elif plan.kind == "run":
        check_run(cmd, plan, session, re.sub(r"\W+", "_", cmd.where))
    else:
        pytest.fail(f"{cmd.where}: `{cmd.text}` fits no rule ({plan.reason}); see tests/test_docs_commands.py")


def test_bash_blocks_hold_only_known_commands() -> None:
    unknown = [u for p in doc_paths() for u in extract(p)[1]]
    assert not unknown, "lines of bash blocks this test cannot check:\n" + "\n".join(unknown)
    assert len(COMMANDS) >= 5 and any(c.where.startswith("README.md") for c in COMMANDS)


def test_short_schedule_overrides_exist_and_validate() -> None:
    assert check_command_line(CONFIG_DIR, "config", list(SHORT), validate_train_config) is None
    assert check_command_line(CONFIG_DIR, "config", [*SHORT, "solver.max_iterations=2"],
                              validate_train_config) is not None  # a key that is not in the schema fails


@pytest.mark.parametrize("text, kind", [
    ("bash scripts/demo.sh", "script"),
    ("python tools/sweep_report.py <sweep folder> [--out DIR] [--quiet]", "flags"),
    ("python scripts/bench_model.py --device cuda", "flags"),
    ("python tools/convert_dataset.py yolo --images /nonexistent/images --names /nonexistent/n.txt", "flags"),
    ("python tools/train.py data=coco data.root=/nonexistent/coco", "compose"),
    ("torchrun --nproc_per_node=8 tools/train.py norm=syncbn", "compose"),
    ("python tools/train.py -m norm=bn,gn seed=0,1", "compose"),
    ("python tools/train.py data=coco data.root=relative/coco", "compose"),
    ("python tools/evaluate.py checkpoint=/nonexistent/model_final.pth", "compose"),
    ("python tools/train.py norm=bn", "run"),
    ("torchrun --nproc_per_node 2 tools/train.py norm=syncbn", "run"),
    (".venv/bin/python tools/evaluate.py checkpoint=outputs/<run>/checkpoints/model_final.pth", "run"),
    ("python tools/sweep_report.py multirun/default", "run"),
    ("python tools/nothing.py", "unknown"),
    ("python -m pytest tests", "unknown"),
    ("python tools/train.py data=<name>", "unknown"),
])
def test_classification_rules(text: str, kind: str) -> None:
    assert classify(DocCommand("x:1", text, tuple(shlex.split(text, comments=True)))).kind == kind


def test_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = ("```bash\n# comment\npython tools/train.py a=1 \\\n    b=2   # trailing\nls -la\n```\n"
            "```yaml\npython tools/not_a_command.py\n```\n```\ngn_detect/\n  python tools/evaluate.py x=1\n```\n")
    path = tmp_path / "probe.md"
    path.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)  # where= is relative to REPO
    commands, unknown = extract(path)
    assert [(c.where, c.argv) for c in commands] == [
        ("probe.md:3", ("python", "tools/train.py", "a=1", "b=2")),
        ("probe.md:12", ("python", "tools/evaluate.py", "x=1")),
    ]
    assert unknown == ["probe.md:5: ls -la"]
