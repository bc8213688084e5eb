from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceLoss
from torch import nn

from medkd_ext.engines import DomainAdversarialTrainer
from medkd_ext.handlers import DANNLambdaHandler
from medkd_ext.networks import DomainDiscriminator


class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def _loader(n, offset, seed):
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        label = (torch.rand(1, 8, 8, 8, generator=g) > 0.7).float()
        data.append({"image": label * 2 + offset + 0.1 * torch.randn(1, 8, 8, 8, generator=g), "label": label})
    return torch.utils.data.DataLoader(data, batch_size=2)


def _trainer(target_weight=1.0, epochs=2, with_disc_params=True):
    torch.manual_seed(0)
    net = TinySeg()
    disc = DomainDiscriminator(in_channels=4, spatial_dims=3, hidden_channels=(8,), norm="instance")
    params = list(net.parameters()) + (list(disc.parameters()) if with_disc_params else [])
    return DomainAdversarialTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=_loader(6, 0.0, 0),
        network=net,
        optimizer=torch.optim.Adam(params, 1e-2),
        loss_function=DiceLoss(to_onehot_y=True, softmax=True),
        target_data_loader=_loader(2, 5.0, 1),
        discriminator=disc,
        feature_layer="encoder",
        target_weight=target_weight,
        decollate=False,
    )


def test_all_terms_are_returned_and_combined():
    trainer = _trainer()
    rows = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rows.append(dict(e.state.output)))
    trainer.run()
    assert len(rows) == 6  # 3 source batches per epoch; the single target batch is cycled
    for out in rows:
        expected = out["seg_source"] + out["seg_target"] + out["disc"]
        assert torch.allclose(out["loss"].detach(), expected, atol=1e-6)
        assert 0.0 <= float(out["domain_acc"]) <= 1.0


def test_unsupervised_ablation_ignores_target_labels():
    trainer = _trainer(target_weight=0.0, epochs=1)
    trainer.target_data_loader = [{"image": torch.randn(2, 1, 8, 8, 8), "label": torch.full((2, 1, 8, 8, 8), -1.0)}]
    rows = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rows.append(dict(e.state.output)))
    trainer.run()
    assert all(float(r["seg_target"]) == 0.0 for r in rows)
    assert all(torch.isfinite(r["loss"]) for r in rows)


def test_encoder_receives_the_reversed_discriminator_gradient():
    trainer = _trainer(epochs=1)
    disc = trainer.discriminator
    feats = torch.randn(2, 4, 8, 8, 8, requires_grad=True)

    def feature_grad(lam):
        disc.grl.lambda_ = lam
        feats.grad = None
        loss = nn.functional.binary_cross_entropy_with_logits(disc(feats).flatten(), torch.ones(2))
        loss.backward()
        return feats.grad.clone()

    disc.eval()
    reversed_grad = feature_grad(1.0)
    grl, disc.grl = disc.grl, nn.Identity()
    plain_grad = feature_grad(1.0)
    disc.grl = grl
    assert torch.allclose(reversed_grad, -plain_grad, atol=1e-7)
    assert torch.allclose(feature_grad(0.25), -0.25 * plain_grad, atol=1e-7)


def test_dann_handler_drives_the_discriminator_lambda():
    trainer = _trainer(epochs=2)
    DANNLambdaHandler(trainer.discriminator).attach(trainer)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(trainer.discriminator.grl.lambda_))
    trainer.run()
    assert seen[0] == 0.0 and seen == sorted(seen) and seen[-1] > 0.9


def test_discriminator_must_be_optimised():
    with pytest.raises(ValueError, match="does not update the discriminator"):
        _trainer(with_disc_params=False)


def test_target_loader_is_cycled_and_can_be_replaced():
    trainer = _trainer(epochs=1)  # 3 source batches
    drawn = []

    class Logged(list):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                drawn.append(i)
                yield batch

    batch = {"image": torch.randn(2, 1, 8, 8, 8), "label": (torch.rand(2, 1, 8, 8, 8) > 0.5).float()}
    trainer.target_data_loader = Logged([batch, batch])
    assert isinstance(trainer.target_data_loader, Logged)
    trainer.run()
    assert drawn == [0, 1, 0]
    trainer.target_data_loader = []
    with pytest.raises(ValueError, match="the target loader yields no batch"):
        trainer.run()
