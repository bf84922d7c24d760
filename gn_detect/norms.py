"""The norm table: every norm name, what it is, and how to build it (imports no torch).

One entry per name (timm's ``_NORM_MAP``). Everything that asks a question about a norm (the
config checks, the builders, the head's per-level choice, folding, the sweep report's labels,
the docs' list) reads a ``NormSpec`` from here; nothing else names a norm. A new norm is one
``register_norm(name, NormSpec(...))`` call, from any module, before the config is checked.

Builders are given lazily, as ``"module:function"`` (imported on first use) or as a callable
``builder(channels, *, layer_name, **opts) -> nn.Module``; ``opts`` are the options the entry
``takes`` (``resolve_norm`` gives no others) plus ``affine`` (False before a proxy-normalized
activation) and, for an activation in ``fused_acts``, ``act`` (the module then applies it). A
builder ignores the options that are not its own.

The table decides fold and fuse: every module ``build_norm`` builds carries its entry's name
(``table_norm``); deploy/fold.py folds it when the entry is ``foldable``, asking the module's
``fold_scale_shift()`` (float64 ``(s, t)`` with ``norm(x) == x * s + t`` in eval mode, or None
when its statistics are not fixed), and ``get_norm_act`` builds it with ``act=`` when the
activation is in ``fused_acts``.

Names are case-insensitive, and '-' and ' ' read as '_' (``canonical_name``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

__all__ = [
    "NormSpec",
    "canonical_name",
    "norm_spec",
    "norm_names",
    "register_norm",
    "split_norm_name",
    "build_norm",
    "resolve_norm",
    "ResolvedNorm",
    "markdown_table",
]

Builder = Union[str, Callable[..., Any]]


def canonical_name(name: str | None) -> str:
    """``"GN-WS" -> "gn_ws"``; None and "" -> "none" (the one spelling rule for norms and
    activations)."""
    if name is None:
        return "none"
    return str(name).strip().lower().replace("-", "_").replace(" ", "_") or "none"


@dataclass(frozen=True)
class NormSpec:
    """What a norm name means.

    Attributes:
        builder: ``"module:function"`` or a callable building the module (see module docstring).
        normalizes: its output is normalized by statistics of its input (what WS and a
            proxy-normalized activation need in front of them).
        batch_stats: those statistics are taken over the images of a batch, so results depend
            on how many images share a statistics group (the batch-size axis of a study).
        cross_rank: the statistics group spans all processes (SyncBN).
        ghost_batch: takes ``bn_group_size`` (images per statistics group on one device).
        groups: takes ``num_groups`` / ``channels_per_group`` (GroupNorm family).
        foldable: in eval mode it is ``x * s + t`` per channel and folds into the preceding
            conv (deploy/fold.py); its module then has ``fold_scale_shift()``.
        fused_acts: activations the built module can apply in the same pass (``act`` kwarg).
        takes: the ``model.norm_opts`` keys it reads (``resolve_norm`` drops the others).
        per_level: the head's default keeps one norm per pyramid level behind its shared conv.
        shift: it adds a per-channel shift (else the preceding conv gets a bias).
        ws: the name implies weight standardization of the preceding conv (``gn_ws``).
        base: for a ``ws`` name, the norm whose module it builds (``gn_ws`` -> ``gn``).
        label: how the sweep report writes it; ``tokens``: run-name words that mean it.
        weights: what a pretrained file must hold to fill it: ``"scale_shift"`` (affine),
            ``"batch_stats"`` (BN with running statistics), ``"group"`` (GN weight/bias), or
            ``None`` (no parameters / cannot be loaded from ImageNet files).
        doc: one line for the docs' table.
    """

    builder: Builder
    normalizes: bool
    batch_stats: bool = False
    cross_rank: bool = False
    ghost_batch: bool = False
    groups: bool = False
    foldable: bool = False
    fused_acts: tuple[str, ...] = ()
    takes: tuple[str, ...] = ("eps",)
    per_level: bool = False
    shift: bool = True
    ws: bool = False
    base: str | None = None
    label: str = ""
    tokens: tuple[str, ...] = ()
    weights: str | None = None
    doc: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def build_fn(self) -> Callable[..., Any]:
        """The builder as a callable (importing its module on first use)."""
        if callable(self.builder):
            return self.builder
        if "fn" not in self._cache:
            module, _, attr = self.builder.partition(":")
            self._cache["fn"] = getattr(importlib.import_module(module), attr)
        return self._cache["fn"]


_LAYERS = "gn_detect.layers.norm"
_GN_OPTS = ("num_groups", "channels_per_group", "eps", "impl")

_NORMS: dict[str, NormSpec] = {
    "affine": NormSpec(f"{_LAYERS}:build_affine", normalizes=False, foldable=True, label="affine",
                       tokens=("affine", "frozenbn", "frozen"), weights="scale_shift",
                       doc="AffineChannel: frozen per-channel affine (BN folded, Detectron)"),
    "bn": NormSpec(f"{_LAYERS}:build_bn", normalizes=True, batch_stats=True, ghost_batch=True,
                   foldable=True, takes=("eps", "bn_group_size"), per_level=True, label="bn", tokens=("bn",), weights="batch_stats",
                   doc="BatchNorm2d, optional ghost batches (bn_group_size)"),
    "syncbn": NormSpec(f"{_LAYERS}:build_syncbn", normalizes=True, batch_stats=True, cross_rank=True,
                       foldable=True, per_level=True, label="syncbn", tokens=("syncbn",),
                       weights="batch_stats", doc="SyncBatchNorm over all ranks"),
    "gn": NormSpec(f"{_LAYERS}:build_gn", normalizes=True, groups=True, fused_acts=("relu",), takes=_GN_OPTS,
                   label="gn", tokens=("gn",), weights="group",
                   doc="GroupNorm, num_groups (default 32) or channels_per_group"),
    "gn_ws": NormSpec(f"{_LAYERS}:build_gn", normalizes=True, groups=True, fused_acts=("relu",), takes=_GN_OPTS,
                      ws=True, base="gn", label="gn+ws", tokens=("gn",), weights="group",
                      doc="GroupNorm after a weight-standardized conv"),
    "ln": NormSpec(f"{_LAYERS}:build_ln", normalizes=True, fused_acts=("relu",), takes=("eps", "impl"), label="ln",
                   tokens=("ln",), weights="group", doc="GroupNorm with G = 1 (LayerNorm over C, H, W)"),
    "in": NormSpec(f"{_LAYERS}:build_in", normalizes=True, fused_acts=("relu",), takes=("eps", "impl"), label="in",
                   tokens=("in",), weights="group",
                   doc="GroupNorm with G = C (InstanceNorm with affine, no running stats)"),
    "none": NormSpec(f"{_LAYERS}:build_none", normalizes=False, shift=False, takes=(), label="none", tokens=("none",),
                     doc="no norm (the conv gets a bias)"),
}


def norm_names() -> tuple[str, ...]:
    """Every registered norm name, in registration order."""
    return tuple(_NORMS)


def norm_spec(name: str | None, *, where: str = "") -> NormSpec:
    """The entry of ``name`` (any spelling); ValueError listing the known names otherwise."""
    key = canonical_name(name)
    try:
        return _NORMS[key]
    except KeyError:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown norm {name!r}; valid choices: {', '.join(_NORMS)}") from None


def register_norm(name: str, spec: NormSpec, *, replace: bool = False) -> None:
    """Add ``name`` to the table (every model, check and report then knows it)."""
    key = canonical_name(name)
    if key in _NORMS and not replace:
        raise ValueError(f"norm {key!r} is already registered; pass replace=True to change it")
    if spec.ws and spec.base not in _NORMS:
        raise ValueError(f"norm {key!r}: ws=True needs base= one of {', '.join(_NORMS)}")
    _NORMS[key] = spec


def unregister_norm(name: str) -> None:
    """Remove ``name`` (tests that register a toy norm clean up with this)."""
    _NORMS.pop(canonical_name(name), None)


_TABLE_COLUMNS = ("normalizes", "batch_stats", "groups", "foldable", "per_level", "ws")


def markdown_table() -> str:
    """The table as docs/norms.md shows it (a test keeps the docs equal to this)."""
    mark = {True: "yes", False: ""}
    head = "| name | " + " | ".join(_TABLE_COLUMNS) + " | fuses | what it is |"
    rows = [head, "|" + "---|" * (len(_TABLE_COLUMNS) + 3)]
    for name, spec in _NORMS.items():
        cells = [mark[bool(getattr(spec, c))] for c in _TABLE_COLUMNS]
        rows.append(f"| `{name}` | " + " | ".join(cells) + f" | {', '.join(spec.fused_acts)} | {spec.doc} |")
    return "\n".join(rows)


def split_norm_name(name: str | None, *, layer_name: str = "") -> tuple[str, bool]:
    """``"gn_ws" -> ("gn", True)``; any other valid name -> (canonical name, False)."""
    spec = norm_spec(name, where=f"layer {layer_name!r}" if layer_name else "")
    if spec.ws:
        return str(spec.base), True
    return canonical_name(name), False


# Every option a builder may be given (a misspelt one is a TypeError, not silently ignored).
BUILD_OPTIONS = frozenset({"num_groups", "channels_per_group", "eps", "momentum", "bn_group_size",
                           "trainable", "affine", "impl", "act"})


def build_norm(name: str | None, channels: int, *, layer_name: str = "", **opts: Any) -> Any:
    """The module for ``name`` (``gn_ws`` builds the GN; its WS half belongs to the conv), tagged
    with its table name (``module.table_norm``: what fold reads). ``act=`` (one of the entry's
    ``fused_acts``) builds the norm with that activation applied by the module itself."""
    unknown = sorted(set(opts) - BUILD_OPTIONS)
    if unknown:
        raise TypeError(f"norm options {unknown} are unknown; valid: {', '.join(sorted(BUILD_OPTIONS))}")
    key, _ = split_norm_name(name, layer_name=layer_name)
    spec = norm_spec(key)
    if opts.get("act") is not None and canonical_name(opts["act"]) not in spec.fused_acts:
        raise ValueError(f"norm {key!r} does not fuse activation {opts['act']!r} (its fused_acts: "
                         f"{', '.join(spec.fused_acts) or 'none'}); build the activation separately")
    if opts.get("act") is None:
        opts.pop("act", None)
    module = spec.build_fn()(channels, layer_name=layer_name, **opts)
    module.table_norm = key
    return module


@dataclass(frozen=True)
class ResolvedNorm:
    """One component's norm, resolved once from the model config (``resolve_norm``).

    ``norm``: the module's table name (``gn_ws`` -> ``gn``); ``ws``: the conv is standardized
    (named or set by ``model.<part>.ws``); ``opts``: its options, merged and restricted to what
    the norm takes; ``per_level``: the head keeps one norm per level (None for other parts);
    ``bn_group_size``: images per statistics group on one device for a ghost-batch norm, else None.
    """

    part: str
    name: str
    norm: str
    ws: bool
    opts: dict
    per_level: bool | None = None

    @property
    def spec(self) -> NormSpec:
        return norm_spec(self.norm)

    @property
    def bn_group_size(self) -> int | None:
        return self.opts.get("bn_group_size") if self.spec.ghost_batch else None

    def as_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "ws": self.ws, "per_level": self.per_level, "opts": dict(self.opts)}


def component_norm_opts(model: Any, part: str) -> dict[str, Any]:
    """``model.norm_opts`` with ``model.<part>.norm_opts`` overrides (null inherits)."""
    opts = dict(model["norm_opts"].items())
    opts.update({k: v for k, v in model[part]["norm_opts"].items() if v is not None})
    return opts


def resolve_norm(model: Any, part: str) -> ResolvedNorm:
    """Norm, WS, options and per-level choice of ``model.<part>`` (a DictConfig or dict of the
    ``model`` section). Only the options the norm ``takes`` are kept (``bn_group_size`` only for a
    ghost-batch norm, ``num_groups`` only for the GN family)."""
    section = model[part]
    name = canonical_name(section["norm"])
    norm, named_ws = split_norm_name(name, layer_name=f"model.{part}.norm")
    spec = norm_spec(name)
    opts = {k: v for k, v in component_norm_opts(model, part).items() if k in spec.takes}
    per_level = None
    if part == "head":
        per_level = section["per_level_norm"]
        per_level = spec.per_level if per_level is None else bool(per_level)
    return ResolvedNorm(part=part, name=name, norm=norm, ws=bool(named_ws or section["ws"]),
                        opts=opts, per_level=per_level)
