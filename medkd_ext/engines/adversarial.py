"""``DomainAdversarialTrainer``: supervised segmentation on a source domain, adapted to a target domain with a
domain discriminator behind a gradient-reversal layer (DANN, Ganin & Lempitsky 2015), as stage 1 of the
joint-teacher bundle (Ceausescu et al.)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.utils import LoaderCycle, optimisation_step
from medkd_ext.networks.taps import FeatureTaps

__all__ = ["DomainAdversarialTrainer"]


class DomainAdversarialTrainer(SupervisedTrainer):
    """Segmentation of a source domain with domain-adversarial adaptation to a target domain.

    Each iteration takes a source batch from ``train_data_loader`` and a target batch from ``target_data_loader``
    and minimises

    ``L = L_seg(source) + r * L_seg(target) + domain_weight * L_disc``

    where ``L_disc`` is the binary cross-entropy of ``discriminator`` classifying the tapped encoder features
    ``feature_layer`` of source (0) and target (1) cases. The discriminator starts with a ``GradientReversal``
    (``medkd_ext.networks.DomainDiscriminator``), so minimising ``L_disc`` trains the discriminator and makes the
    encoder features domain-invariant; schedule its lambda with ``medkd_ext.handlers.DANNLambdaHandler``.
    ``r = 0`` is the unsupervised-adaptation ablation: target labels are not used (nor required).

    Every epoch starts a new pass over the target loader (reshuffled, cycled within the epoch when it is shorter
    than the source loader), so an epoch depends only on the random state at its start, which is what a resumed
    run restores (:class:`medkd_ext.handlers.TrainingState`).

    ``engine.state.output`` holds ``image``/``label``/``pred`` of the source batch, ``loss``, and the terms
    ``seg_source``, ``seg_target``, ``disc`` and ``domain_acc`` (the discriminator's accuracy on the batch).

    Args:
        device: device of the networks.
        max_epochs: epochs; an epoch is one pass over the source loader.
        train_data_loader: source-domain loader (dict batches with ``image`` and ``label``).
        network: the segmentation network (the teacher being trained).
        optimizer: optimizer over the network's **and** the discriminator's parameters.
        loss_function: segmentation loss, e.g. ``monai.losses.DiceLoss``.
        target_data_loader: target-domain loader.
        discriminator: domain classifier on the tapped features, returning one logit per case.
        feature_layer: module path of ``network`` whose output the discriminator sees.
        target_weight: ``r``, weight of the supervised target term.
        domain_weight: weight of the adversarial term.
        kwargs: other ``SupervisedTrainer`` arguments.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        target_data_loader: Iterable,
        discriminator: nn.Module,
        feature_layer: str,
        target_weight: float = 1.0,
        domain_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        if target_weight < 0 or domain_weight < 0:
            raise ValueError(
                f"DomainAdversarialTrainer: target_weight and domain_weight must be >= 0, got {target_weight} and "
                f"{domain_weight}."
            )
        self.target_data_loader = target_data_loader  # cycled through self._target_batches
        self.discriminator = discriminator.to(device)
        self.target_weight = float(target_weight)
        self.domain_weight = float(domain_weight)
        self.taps = FeatureTaps(network, [feature_layer])
        self.feature_layer = feature_layer
        self.add_event_handler(Events.EPOCH_STARTED, self._restart_target)
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) not in optimised for p in self.discriminator.parameters() if p.requires_grad):
            raise ValueError(
                "DomainAdversarialTrainer: the optimizer does not update the discriminator; build it over "
                "\"$list(@network.parameters()) + list(@discriminator.parameters())\"."
            )

    @property
    def target_data_loader(self) -> Iterable:
        """The target-domain loader; setting it starts a new cycle over the new loader."""
        return self._target_batches.loader

    @target_data_loader.setter
    def target_data_loader(self, loader: Iterable) -> None:
        self._target_batches = LoaderCycle(loader, "DomainAdversarialTrainer: the target loader")

    def _restart_target(self, engine: DomainAdversarialTrainer) -> None:
        engine._target_batches.restart(epoch=engine.state.epoch)

    def _forward(self, engine: DomainAdversarialTrainer, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = engine.inferer(inputs, engine.network)
        return pred, engine.taps[engine.feature_layer]

    def _iteration(self, engine: DomainAdversarialTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One adversarial step on a source and a target batch."""
        if batchdata is None:
            raise ValueError("DomainAdversarialTrainer: no batch data for this iteration.")
        src_x, src_y = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        tgt_batch = next(engine._target_batches)
        tgt_x, tgt_y = engine.prepare_batch(tgt_batch, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        engine.state.output = {Keys.IMAGE: src_x, Keys.LABEL: src_y}

        def _forward() -> tuple[torch.Tensor, ...]:
            src_pred, src_feat = engine._forward(engine, src_x)
            tgt_pred, tgt_feat = engine._forward(engine, tgt_x)
            engine.state.output[Keys.PRED] = src_pred
            return src_pred, src_feat, tgt_pred, tgt_feat

        def _loss(forwarded: tuple[torch.Tensor, ...]) -> None:
            src_pred, src_feat, tgt_pred, tgt_feat = forwarded
            seg_source = engine.loss_function(src_pred, src_y).mean()
            seg_target = (
                engine.loss_function(tgt_pred, tgt_y).mean()
                if engine.target_weight > 0
                else torch.zeros((), device=src_pred.device)
            )
            logits = torch.cat([engine.discriminator(src_feat), engine.discriminator(tgt_feat)]).flatten()
            domains = torch.cat([torch.zeros(len(src_x)), torch.ones(len(tgt_x))]).to(logits)
            disc = F.binary_cross_entropy_with_logits(logits, domains)
            loss = seg_source + engine.target_weight * seg_target + engine.domain_weight * disc
            engine.state.output.update(
                {
                    Keys.LOSS: loss,
                    "seg_source": seg_source.detach(),
                    "seg_target": seg_target.detach(),
                    "disc": disc.detach(),
                    "domain_acc": ((logits.detach() > 0).float() == domains).float().mean(),
                }
            )

        engine.network.train()
        engine.discriminator.train()
        optimisation_step(engine, _forward, _loss)
        return engine.state.output
