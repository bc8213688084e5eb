"""Frozen teachers: a network held in ``eval()``, without gradients, run under ``torch.inference_mode()``.

This module is the one place where a teacher is frozen; the trainers (``medkd_ext.engines.DistillationTrainer``) and
:class:`~medkd_ext.networks.JointTeacher` wrap their teachers in :class:`FrozenTeacher`. A frozen teacher stays in
evaluation mode whatever the trainer does, its parameters never receive gradients, and what it returns can still
enter a loss. :class:`FrozenTeacher` does all three; :func:`freeze` does the first two in place for code that keeps
the bare network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medkd_ext.utils import clone_inference_tensors

__all__ = ["FrozenTeacher", "freeze", "unwrap_network"]


def freeze(network: nn.Module) -> nn.Module:
    """Put ``network`` in ``eval()`` and set ``requires_grad=False`` on all its parameters, in place.

    Unlike :class:`FrozenTeacher`, a later ``network.train()`` is not prevented.

    Args:
        network: the network to freeze.

    Returns:
        the same ``network`` object, for chaining.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"freeze: network must be a torch.nn.Module, got {type(network).__name__}.")
    network.eval()
    for param in network.parameters():
        param.requires_grad_(False)
    return network


def unwrap_network(network: nn.Module) -> nn.Module:
    """Return the network inside ``DataParallel``, ``DistributedDataParallel`` and :class:`FrozenTeacher` wrappers.

    Wrappers may be nested (``DistributedDataParallel(FrozenTeacher(net))``); all of them are removed. Module names
    used by :class:`~medkd_ext.networks.FeatureTaps` and keys written by :func:`~medkd_ext.networks.save_state_dict`
    are relative to the unwrapped network.

    Args:
        network: a network, possibly wrapped.

    Returns:
        the innermost network.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"unwrap_network: network must be a torch.nn.Module, got {type(network).__name__}.")
    while True:
        if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            network = network.module
        elif isinstance(network, FrozenTeacher):
            network = network.network
        else:
            return network


class FrozenTeacher(nn.Module):
    """A teacher network that stays frozen: ``eval()`` mode, ``requires_grad=False``, no autograd graph.

    The wrapped network is put in evaluation mode and its parameters stop requiring gradients. ``train(mode)`` is
    overridden so that the teacher stays in evaluation mode even when a trainer calls ``train()`` on a module that
    contains it, and the network is put back in evaluation mode before every forward pass, so that a handler that
    calls ``train()`` on the bare network cannot change it either (batch-norm statistics and dropout never change).
    The forward pass runs under ``torch.inference_mode()`` (or ``torch.no_grad()`` when ``inference_mode=False``).

    Tensors made under inference mode cannot be saved for backward, so a loss such as ``(student * teacher).sum()``
    would fail. With ``clone_outputs=True`` (default) every inference tensor returned by the network is cloned once
    after inference mode has been left (:func:`medkd_ext.utils.clone_inference_tensors`), which yields ordinary
    tensors that can enter any loss; when the caller itself is already inside ``torch.inference_mode()`` (an
    evaluator) nothing is cloned.

    Intermediate features are taken with :class:`~medkd_ext.networks.FeatureTaps`, whose module names are relative
    to the inner network (``"features.denseblock4"``, not ``"network.features.denseblock4"``).

    ``state_dict()`` has the inner network's keys (no ``"network."`` prefix), so a teacher checkpoint is the same file
    as the bare network's; ``load_state_dict()`` accepts keys with or without the ``"network."`` prefix. The same holds
    when the teacher is a sub-module of a larger module. Parameters are frozen again after every load.

    Args:
        network: the teacher network; it is frozen in place and exposed as ``.network``.
        inference_mode: run the forward pass under ``torch.inference_mode()`` (default, fastest); ``False`` uses
            ``torch.no_grad()``, whose outputs need no cloning.
        clone_outputs: clone inference-mode outputs into ordinary tensors (see above). Only meaningful with
            ``inference_mode=True``.

    Example::

        teacher = FrozenTeacher(DenseNet121(spatial_dims=2, in_channels=1, out_channels=14))
        load_state_dict(teacher, "models/teacher.pt")
        logits_t = teacher(images)  # no graph, usable in KDLoss()(logits_s, logits_t)
    """

    def __init__(self, network: nn.Module, inference_mode: bool = True, clone_outputs: bool = True) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"FrozenTeacher: network must be a torch.nn.Module, got {type(network).__name__}.")
        self.network = freeze(network)
        self.inference_mode = bool(inference_mode)
        self.clone_outputs = bool(clone_outputs)
        super().train(False)
        self.register_state_dict_post_hook(_drop_network_prefix)
        self.register_load_state_dict_pre_hook(_add_network_prefix)
        self.register_load_state_dict_post_hook(_refreeze)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Keep the teacher in evaluation mode whatever ``mode`` is."""
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the frozen network; arguments are passed through unchanged.

        Returns:
            the network's output (tensor, tuple, list or dict of tensors), without autograd history.
        """
        self.network.train(False)
        if not self.inference_mode:
            with torch.no_grad():
                return self.network(*args, **kwargs)
        with torch.inference_mode():
            output = self.network(*args, **kwargs)
        if self.clone_outputs and not torch.is_inference_mode_enabled():
            output = clone_inference_tensors(output)
        return output

    def extra_repr(self) -> str:
        return f"inference_mode={self.inference_mode}, clone_outputs={self.clone_outputs}"


_PREFIX = "network."


def _drop_network_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post hook: ``<prefix>network.x`` -> ``<prefix>x`` (keys and metadata), keeping the order."""
    inner = prefix + _PREFIX
    keys = [k for k in state_dict if k.startswith(inner)]
    for key in keys:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
            new_key = prefix[:-1] if key == inner[:-1] else prefix + key[len(inner) :]
            if new_key not in metadata:
                metadata[new_key] = metadata.pop(key)


def _add_network_prefix(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    """Load pre hook: ``<prefix>x`` -> ``<prefix>network.x`` for keys saved without the wrapper prefix."""
    inner_keys = set(module.network.state_dict().keys())
    for key in [k for k in state_dict if k.startswith(prefix)]:
        relative = key[len(prefix) :]
        # a key already carrying the wrapper prefix is kept, unless the inner network itself has that name
        if relative.startswith(_PREFIX) and relative not in inner_keys:
            continue
        state_dict[prefix + _PREFIX + relative] = state_dict.pop(key)


def _refreeze(module: nn.Module, incompatible_keys: Any) -> None:
    freeze(module.network)
