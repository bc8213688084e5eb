"""Intermediate features by forward hooks addressed by module path; the network is never rewritten.

Any MONAI or PyTorch network works as teacher or student unchanged: the layers are named as in
``network.named_modules()`` (``"features.denseblock4.denselayer15"``, ``"model.1.submodule.0"``), see
:func:`module_names`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.utils import clone_inference_tensors

__all__ = ["FeatureTaps", "module_names"]

_MAX_LISTED = 50


def module_names(network: nn.Module) -> list[str]:
    """Names of all sub-modules of ``network``, in registration order, as accepted by :class:`FeatureTaps`.

    Wrappers (``DataParallel``, ``DistributedDataParallel``, :class:`~medkd_ext.networks.FrozenTeacher`) are removed
    first, so the names are relative to the inner network.

    Args:
        network: a network, possibly wrapped.

    Returns:
        the non-empty names of ``unwrap_network(network).named_modules()``.
    """
    return [name for name, _ in unwrap_network(network).named_modules() if name]


def _resolve(network: nn.Module, name: str) -> nn.Module | None:
    """The sub-module ``name`` of the unwrapped network, else of the wrapper itself (``"network.x"``), else None."""
    inner = unwrap_network(network)
    roots = (inner,) if inner is network else (inner, network)
    for root in roots:
        try:
            return root.get_submodule(name)
        except AttributeError:
            continue
    return None


def _near_names(name: str, names: list[str], inner: nn.Module) -> list[str]:
    """Valid names close to a wrong one: children of its longest valid prefix, then close spellings."""
    near: list[str] = []
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:depth])
        try:
            module = inner.get_submodule(parent)
        except AttributeError:
            continue
        near = [f"{parent}.{child}" if parent else child for child, _ in module.named_children()]
        break
    near += [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.6) if n not in near]
    if len(near) > 12:
        near = near[:6] + ["..."] + near[-5:]
    return near


def _unknown_layers_message(network: nn.Module, bad: list[str]) -> str:
    inner = unwrap_network(network)
    names = module_names(network)
    lines = [f"FeatureTaps: {type(inner).__name__} has no sub-module named {', '.join(repr(b) for b in bad)}."]
    for name in bad:
        near = _near_names(name, names, inner)
        if near:
            lines.append(f"  valid names near {name!r}: {', '.join(near)}")
    if len(names) <= _MAX_LISTED:
        lines.append(f"Valid names: {', '.join(names)}.")
    else:
        shallow = [n for n in names if n.count(".") <= 1]
        listed = shallow[:_MAX_LISTED] + (["..."] if len(shallow) > _MAX_LISTED else [])
        lines.append(f"Valid names (the first two levels of {len(names)}): {', '.join(listed)}.")
    lines.append("Names are relative to the unwrapped network; medkd_ext.networks.module_names(network) lists all.")
    return "\n".join(lines)


def _first_tensor(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
        raise TypeError(f"FeatureTaps: layer {name!r} returned a {type(output).__name__} without any tensor.")
    if isinstance(output, Mapping):
        raise TypeError(
            f"FeatureTaps: layer {name!r} returned a dict (keys {list(output)}); tap the sub-module that produces "
            "the wanted entry instead."
        )
    raise TypeError(f"FeatureTaps: layer {name!r} returned {type(output).__name__}, expected a tensor.")


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor``; that of an inference tensor is an ordinary tensor, which autograd may save for backward."""
    return clone_inference_tensors(tensor) if tensor.is_inference() else tensor.clone()


class FeatureTaps:
    """Record the outputs of named sub-modules of a network with forward hooks.

    The hooks are registered on construction and stay until :meth:`remove` (or the end of a ``with`` block).
    After every forward pass of the network, :attr:`features` maps each requested name to the output of that layer
    in that pass; a forward pre-hook on ``network`` empties the record at the start of each pass, so a layer that
    did not run in the last pass is absent rather than stale. If a layer returns a tuple or list, its first tensor is
    recorded; a layer returning a dict is an error (tap the sub-module that makes the wanted entry).

    Names are those of :func:`module_names`: relative to the network inside ``DataParallel`` /
    ``DistributedDataParallel`` / :class:`~medkd_ext.networks.FrozenTeacher` wrappers (``"features.denseblock4"``);
    names including the wrapper's prefix (``"network.features.denseblock4"``) are accepted too. Keys of
    :attr:`features` are the names exactly as given. ``DataParallel`` with several devices is not supported (each
    replica would overwrite the record); ``DistributedDataParallel`` is.

    Teacher features: a :class:`~medkd_ext.networks.FrozenTeacher` runs under ``torch.inference_mode()``, so its
    layer outputs are inference tensors, which autograd cannot save for backward. When :attr:`features` is read
    outside inference mode, such tensors are replaced by ordinary copies, so they can enter any loss.

    In-place operations: without ``clone``, the recorded tensor is the layer's output object itself, so a following
    in-place operation (``ReLU(inplace=True)`` right after a tapped ``BatchNorm``, as in MONAI's DenseNet after
    ``norm0``/``norm5``) changes it. ``clone=True`` records a copy (autograd still flows through it to the student).
    MONAI's ``_DenseLayer``, ``_DenseBlock`` and ``_Transition`` outputs are not modified in place.

    Args:
        network: the network to observe; it is not modified apart from the hooks.
        layers: one module name or a sequence of distinct names.
        clone: record a copy of each output instead of the output itself.

    Example::

        with FeatureTaps(student, ["features.denseblock2.denselayer11"]) as taps:
            logits = student(images)
            feats = taps.features["features.denseblock2.denselayer11"]  # (B, C, H, W)

    Raises:
        ValueError: a name is empty, repeated or not a sub-module (the message lists valid names near it).
        TypeError: ``network`` is not an ``nn.Module`` or a name is not a string; during a forward pass, a tapped
            layer returned no tensor.
    """

    def __init__(self, network: nn.Module, layers: str | Sequence[str], clone: bool = False) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"FeatureTaps: network must be a torch.nn.Module, got {type(network).__name__}.")
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("FeatureTaps: layers is empty; give at least one module name (see module_names).")
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"FeatureTaps: layer names must be strings, got {name!r} ({type(name).__name__}).")
            if not name:
                raise ValueError("FeatureTaps: a layer name is empty; give module names such as 'features.conv0'.")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"FeatureTaps: layer names {repeated} are given more than once; give each once.")
        modules = {name: _resolve(network, name) for name in names}
        bad = [name for name, module in modules.items() if module is None]
        if bad:
            raise ValueError(_unknown_layers_message(network, bad))

        self.network = network
        self.layers: tuple[str, ...] = tuple(names)
        self.clone = bool(clone)
        self._features: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = [network.register_forward_pre_hook(self._on_network_call)]
        for name, module in modules.items():
            self._handles.append(module.register_forward_hook(self._hook_for(name)))

    def _on_network_call(self, module: nn.Module, args: Any) -> None:
        self._features.clear()

    def _hook_for(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = _first_tensor(output, name)
            self._features[name] = _copy(tensor) if self.clone else tensor

        return hook

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """A new dict ``{name: tensor}`` of the layers recorded in the last forward pass, in the order of ``layers``.

        Read outside ``torch.inference_mode()``, inference tensors are replaced by ordinary copies (made once).
        """
        if not torch.is_inference_mode_enabled():
            for name, tensor in self._features.items():
                self._features[name] = clone_inference_tensors(tensor)
        return {name: self._features[name] for name in self.layers if name in self._features}

    def __getitem__(self, name: str) -> torch.Tensor:
        features = self.features
        if name not in features:
            if name not in self.layers:
                raise KeyError(f"FeatureTaps: {name!r} is not tapped; tapped layers are {list(self.layers)}.")
            raise KeyError(f"FeatureTaps: layer {name!r} has not run since the last forward pass started or clear().")
        return features[name]

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def clear(self) -> None:
        """Forget the recorded features (frees their memory); the hooks stay."""
        self._features.clear()

    def remove(self) -> None:
        """Remove all hooks; the last recorded features stay readable. Calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={list(self.layers)}, clone={self.clone}, active={self.active})"
