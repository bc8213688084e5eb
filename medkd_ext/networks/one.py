"""ONE: the multi-branch network of Lan, Zhu and Gong, "Knowledge Distillation by On-the-Fly Native Ensemble"
(NeurIPS 2018), built from an ordinary MONAI classifier.

The backbone is cut at one module: everything before it is the shared trunk (the paper's "low-level layers"), and
the module, every later stage and the classifier form one branch, copied ``num_branches`` times (3 in the paper). A
gate (FC, BatchNorm, ReLU, softmax over the branches, on the globally average-pooled trunk features) weighs the
branches' logits into the ensemble, the on-the-fly teacher: ``z_e = sum_i g_i z_i``.

Where a backbone can be cut is known per architecture family, with module names as in the backbone (MONAI's):

- MONAI ``ResNet`` (``resnet10`` ... ``resnet200``): ``split="layer1"`` ... ``"layer4"`` (default ``"layer4"``);
  a branch is the layers from ``split`` on, ``avgpool`` and ``fc``;
- MONAI ``DenseNet`` (``DenseNet121/169/201/264``, and ``medkd_ext.networks.DenseNet40``):
  ``split="features.denseblock<k>"`` (default the last dense block); a branch is that dense block, every later
  transition and block, ``features.norm5`` and ``class_layers``.

Other networks are refused with a clear error.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet, ResNet
from torch import nn

from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.utils import check_positive_int, global_avg_pool

__all__ = ["ONE_FAMILIES", "ONE_OUTPUTS", "ONENetwork"]

ONE_FAMILIES = ("monai_resnet", "monai_densenet")
"""Backbone families :class:`ONENetwork` can split."""
ONE_OUTPUTS = ("branch", "ensemble", "all")
"""What :meth:`ONENetwork.forward` returns: one branch's logits, the gated ensemble's, or everything (training)."""

_FLATTEN = "flatten"
_DENSE_BLOCK = re.compile(r"^(?:features\.)?denseblock(\d+)$")


@dataclass(frozen=True)
class _Split:
    family: str
    trunk: list[str]  # module paths of the backbone run before the split, in order
    branch: list[str]  # module paths of one branch, in order; _FLATTEN inserts a flatten (no backbone module)
    init: Callable[[nn.Module], None]


def _init_resnet(module: nn.Module) -> None:
    """MONAI ResNet's initialisation: He normal (fan out) convolutions, unit norms, zero linear bias."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        else:
            _init_common(m)


def _init_densenet(module: nn.Module) -> None:
    """MONAI DenseNet's initialisation: He normal (fan in) convolutions, unit norms, zero linear bias."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        else:
            _init_common(m)


def _init_common(m: nn.Module) -> None:
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        m.reset_parameters()
    elif isinstance(m, nn.Linear):
        m.reset_parameters()
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _resnet_split(net: ResNet, split: str | None) -> _Split:
    layers = ["layer1", "layer2", "layer3", "layer4"]
    split = "layer4" if split is None else split
    if split not in layers:
        raise ValueError(f"ONENetwork: a MONAI ResNet splits at one of {layers}, got split={split!r}.")
    if net.fc is None:
        raise ValueError(
            "ONENetwork: the MONAI ResNet has no classifier (fc is None, feed_forward=False); build it "
            "with num_classes so that every branch ends with its own classifier."
        )
    at = layers.index(split)
    stem = ["conv1", "bn1", "act"] + ([] if net.no_max_pool else ["maxpool"])
    return _Split("monai_resnet", stem + layers[:at], layers[at:] + ["avgpool", _FLATTEN, "fc"], _init_resnet)


def _densenet_split(net: DenseNet, split: str | None) -> _Split:
    children = [name for name, _ in net.features.named_children()]
    blocks = [name for name in children if _DENSE_BLOCK.match(name)]
    if not blocks:
        raise ValueError("ONENetwork: the DenseNet has no 'features.denseblock<k>' module to split at.")
    name = blocks[-1] if split is None else split
    match = _DENSE_BLOCK.match(name)
    if match is None or f"denseblock{match.group(1)}" not in blocks:
        choices = [f"features.{b}" for b in blocks]
        raise ValueError(f"ONENetwork: a MONAI DenseNet splits at one of {choices}, got split={split!r}.")
    at = children.index(f"denseblock{match.group(1)}")
    trunk = [f"features.{c}" for c in children[:at]]
    return _Split("monai_densenet", trunk, [f"features.{c}" for c in children[at:]] + ["class_layers"], _init_densenet)


def _split_spec(backbone: nn.Module, split: str | None) -> _Split:
    if isinstance(backbone, ResNet):
        return _resnet_split(backbone, split)
    if isinstance(backbone, DenseNet):
        return _densenet_split(backbone, split)
    raise TypeError(
        f"ONENetwork: no branch split is known for {type(backbone).__name__}; supported backbones are MONAI ResNet "
        "(monai.networks.nets.resnet10 ... resnet200, split 'layer1'...'layer4') and MONAI DenseNet (DenseNet121/169/"
        "201/264, medkd_ext.networks.DenseNet40, split 'features.denseblock<k>')."
    )


def _key(path: str) -> str:
    return path.replace(".", "_")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class _GateNorm(nn.BatchNorm1d):
    """The gate's BatchNorm; a training batch of one sample uses the running statistics instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ONENetwork(nn.Module):
    """Multi-branch network of ONE (Lan et al., NeurIPS 2018) built from a MONAI ResNet or DenseNet classifier.

    The trunk is the backbone's modules before ``split`` (the same module objects: the backbone is not copied); branch
    0 is the backbone's own modules from ``split`` on, branches ``1 .. num_branches - 1`` are deep copies of them,
    re-initialised as the backbone family initialises (``reinit_branches=True``, so that the branches start
    different, as the separately built branches of the paper do; ``False`` keeps the copies' weights, for a
    pre-trained backbone). The gate is ``Linear(C_trunk, m) -> BatchNorm1d(m) -> ReLU -> softmax`` on the trunk's
    features pooled over space (the paper's gate); the ensemble logits are ``z_e = sum_i g_i z_i``.

    What ``forward`` returns (``output``; the attribute ``output`` is the default of the argument):

    - ``"branch"`` (default): the logits ``(B, C)`` of branch ``branch`` alone (the trunk and one branch run: the
      student of the paper's "single branch" deployment, which the KD study reports, picking the best branch);
    - ``"ensemble"``: the gated ensemble's logits ``(B, C)`` (the paper's ensemble deployment);
    - ``"all"``: ``{"branches": [m tensors (B, C)], "gate": (B, m), "ensemble": (B, C)}``, what
      :class:`medkd_ext.engines.ONETrainer` trains on.

    :meth:`branch_network` gives branch ``i`` with the trunk as a plain backbone of the original architecture (e.g.
    to export or serve the student without ``medkd_ext``).

    Args:
        backbone: a MONAI ``ResNet`` or ``DenseNet`` (also ``DenseNet40``) with its classifier; wrappers
            (``DataParallel``, ``FrozenTeacher``) are removed.
        split: module where the branches start (see the module docstring); default ``"layer4"`` (ResNet) or the last
            dense block (DenseNet).
        num_branches: ``m``, number of branches (3 in the paper and the KD study), at least 2.
        output: default of ``forward``'s ``output``, one of :data:`ONE_OUTPUTS`.
        branch: index of the branch ``output="branch"`` returns.
        reinit_branches: re-initialise the copied branches (see above).

    Shapes:
        input ``(B, C_in, *spatial)`` as the backbone takes; logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        split: str | None = None,
        num_branches: int = 3,
        output: str = "branch",
        branch: int = 0,
        reinit_branches: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"ONENetwork: backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        backbone = unwrap_network(backbone)
        check_positive_int(num_branches, "ONENetwork", "num_branches")
        if num_branches < 2:
            raise ValueError(f"ONENetwork: num_branches must be at least 2 (an ensemble), got {num_branches}.")
        spec = _split_spec(backbone, split)
        self.family = spec.family
        self.trunk = nn.Sequential(OrderedDict((_key(p), backbone.get_submodule(p)) for p in spec.trunk))
        first = nn.Sequential(
            OrderedDict((_key(p), nn.Flatten(1) if p == _FLATTEN else backbone.get_submodule(p)) for p in spec.branch)
        )
        branches = [first]
        for _ in range(num_branches - 1):
            copied = copy.deepcopy(first)
            if reinit_branches:
                spec.init(copied)
            branches.append(copied)
        self.branches = nn.ModuleList(branches)
        convs = [m for m in self.trunk.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if not convs:
            raise ValueError("ONENetwork: the trunk has no convolution; split at a later module.")
        channels = convs[-1].out_channels
        self.gate = nn.Sequential(
            OrderedDict(
                [
                    ("fc", nn.Linear(channels, num_branches)),
                    ("norm", _GateNorm(num_branches)),
                    ("act", nn.ReLU()),
                    ("softmax", nn.Softmax(dim=1)),
                ]
            )
        )
        self._branch_paths = [p for p in spec.branch if p != _FLATTEN]
        object.__setattr__(self, "_backbone", backbone)  # not a sub-module: its modules are the trunk's and branch 0's
        self.output = output
        self.branch = branch
        self._check_output(output, branch)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def student(self) -> nn.Module:
        """The backbone as it trains: the trunk and branch 0 in the original architecture, sharing this network's
        modules (not a copy), so its ``state_dict()`` is branch 0's student with the backbone's keys at any time (what
        a checkpoint of the single-branch student holds; :meth:`branch_network` copies another branch)."""
        return self._backbone

    def _check_output(self, output: str, branch: int) -> None:
        if output not in ONE_OUTPUTS:
            raise ValueError(f"ONENetwork: output must be one of {ONE_OUTPUTS}, got {output!r}.")
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < self.num_branches:
            raise ValueError(f"ONENetwork: branch must be an index in [0, {self.num_branches}), got {branch!r}.")

    def forward(self, x: torch.Tensor, output: str | None = None) -> torch.Tensor | dict[str, torch.Tensor | list]:
        """Trunk, then the branches and the gate as ``output`` (default ``self.output``) asks; see the class."""
        output = self.output if output is None else output
        self._check_output(output, self.branch)
        features = self.trunk(x)
        if output == "branch":
            return self.branches[self.branch](features)
        logits = [branch(features) for branch in self.branches]
        gate = self.gate(global_avg_pool(features))
        # ONE's gated ensemble: z_e = sum_i g_i z_i
        ensemble = torch.einsum("bm,bmc->bc", gate.to(logits[0].dtype), torch.stack(logits, dim=1))
        if output == "ensemble":
            return ensemble
        return {"branches": logits, "gate": gate, "ensemble": ensemble}

    def branch_network(self, index: int | None = None) -> nn.Module:
        """A copy of the backbone whose layers from the split on are those of branch ``index`` (default
        ``self.branch``): the trained single-branch student as a plain MONAI network, same state-dict keys as the
        backbone."""
        index = self.branch if index is None else index
        self._check_output("branch", index)
        network = copy.deepcopy(self._backbone)
        if index != 0:
            branch = self.branches[index]
            for path in self._branch_paths:
                _set_submodule(network, path, copy.deepcopy(branch.get_submodule(_key(path))))
        return network

    def extra_repr(self) -> str:
        return f"family={self.family!r}, num_branches={self.num_branches}, output={self.output!r}, branch={self.branch}"
