"""PreciseBN: replace BatchNorm running statistics by their average over many training batches.

The running statistics a BN layer keeps during training are an EMA of batch statistics taken
while the weights moved; evaluated models are better served by statistics of the final weights
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; detectron2's PreciseBN hook /
fvcore's ``update_bn_stats``). :func:`update_bn_stats` runs ``num_iter`` training batches
through the model in training mode without gradients and sets, for every BN layer in training
mode,

    running_mean = mean over batches of the batch mean
    running_var  = mean over batches of the batch variance the layer stores (unbiased, 1/(n-1))

exactly as each layer computes them (docs/norms.md): it sets ``momentum = 1.0`` so that after a
forward the running buffers hold that batch's statistics, and averages those. So ghost-batch BN
(``bn_group_size``) contributes the mean over its groups, our SyncBatchNorm the statistics of
the batch of all ranks (unbiased over the global count), torch's ``_BatchNorm`` its own. Under
DDP every rank must call it with the same ``num_iter``; layers that do not synchronize
(``BatchNorm2d``, torch BN) are then averaged over ranks in one all-reduce, so every rank ends
with the same statistics. Everything else the forward passes touch is put back: momentum,
``num_batches_tracked``, other buffers (e.g. the loss normalizer's EMA), the random streams.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import capture_rng_state, restore_rng_state
from gn_detect.layers import SyncBatchNorm

log = logging.getLogger(__name__)

__all__ = ["bn_layers", "update_bn_stats"]

_SYNCED = (SyncBatchNorm, nn.SyncBatchNorm)  # statistics already span all ranks


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BN layers PreciseBN updates: in training mode (frozen ones stay in eval) and
    tracking running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats and m.running_mean is not None]


def _accumulate(model: nn.Module, layers: list[_BatchNorm], stats: list[torch.Tensor], batches: Iterable[Any],
                forward: Callable[[nn.Module, Any], Any], num_iter: int) -> int:
    """Adds up, per layer, the (mean, var) each batch leaves in the buffers; ends with the
    averages in ``stats`` (float64 sums: no running-average rounding drift)."""
    seen = 0
    for batch in itertools.islice(batches, num_iter):
        forward(model, batch)
        seen += 1
        for s, m in zip(stats, layers):
            s[0] += m.running_mean.double()
            s[1] += m.running_var.double()
    if seen < num_iter:
        raise ValueError(f"PreciseBN: the data gave {seen} of solver.precise_bn.num_iter={num_iter} batches; "
                         "lower num_iter or use a training loader that does not end")
    for s in stats:
        s /= seen
    return seen


def _average_over_ranks(layers: list[_BatchNorm], stats: list[torch.Tensor]) -> None:
    """Mean over ranks of the statistics of layers that do not synchronize, in one all-reduce."""
    local = [i for i, m in enumerate(layers) if not isinstance(m, _SYNCED)]
    if gdist.get_world_size() == 1 or not local:
        return
    flat = torch.cat([stats[i].flatten() for i in local])
    dist.all_reduce(flat)
    flat /= gdist.get_world_size()
    for i, part in zip(local, flat.split([stats[i].numel() for i in local])):
        stats[i].copy_(part.view_as(stats[i]))


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any],
                    num_iter: int) -> int:
    """Recompute the running statistics of ``model``'s BN layers over ``num_iter`` batches.

    ``forward(model, batch)`` runs one batch through ``model`` (its result is ignored); pass the
    bare model, not a DDP wrapper (DDP would broadcast rank 0's buffers at every forward).
    Returns the number of layers updated (0, with a log line, when the model has none).
    """
    if num_iter < 1:
        raise ValueError(f"solver.precise_bn.num_iter={num_iter}: use at least 1 batch")
    was_training = model.training
    model.train()
    layers = bn_layers(model)
    if not layers:
        log.info("PreciseBN: the model has no BatchNorm layer in training mode; nothing to update")
        model.train(was_training)
        return 0
    momenta = [m.momentum for m in layers]
    # every buffer is put back afterwards (num_batches_tracked, the loss normalizer's EMA...),
    # the running statistics too if this fails
    buffers, rng = [(b, b.detach().clone()) for b in model.buffers()], capture_rng_state()
    stats = [torch.zeros(2, m.num_features, dtype=torch.float64, device=m.running_mean.device) for m in layers]
    try:
        for m in layers:
            m.momentum = 1.0
        seen = _accumulate(model, layers, stats, batches, forward, num_iter)
        _average_over_ranks(layers, stats)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for buf, copy in buffers:
            buf.copy_(copy)
        restore_rng_state(rng)
        model.train(was_training)
    for s, m in zip(stats, layers):
        m.running_mean.copy_(s[0])
        m.running_var.copy_(s[1])
    log.info("PreciseBN: statistics of %d BN layer(s) recomputed over %d batches", len(layers), seen)
    return len(layers)
