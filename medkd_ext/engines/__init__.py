"""Ignite/MONAI trainers for distillation."""

from medkd_ext.engines.distillation import ALL_TEACHERS, LABEL, PRED, DistillationTrainer, LossTerm, loss_terms_output

__all__ = ["DistillationTrainer", "LossTerm", "loss_terms_output", "PRED", "LABEL", "ALL_TEACHERS"]
