"""``DistillationTrainer``: a MONAI ``SupervisedTrainer`` that distils frozen teachers into the student.

The trainer is configured entirely from a bundle config: the teachers, and a list of named, weighted loss
terms. Each term says which student output and which teacher output(s) it compares, so the layers to tap
are derived from the terms; the features are taken with forward hooks (``medkd_ext.networks.FeatureTaps``)
and no network is rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.utils import optimisation_step
from medkd_ext.networks.frozen import FrozenTeacher
from medkd_ext.networks.taps import FeatureTaps
from medkd_ext.utils import check_positive_int, global_avg_pool

if TYPE_CHECKING:
    from medkd_ext.engines.teacher_cache import TeacherOutputCache

__all__ = ["DistillationTrainer", "LossTerm", "loss_parameters", "PRED", "LABEL", "ALL_TEACHERS", "loss_terms_output"]

PRED = "pred"
"""Source name of a network's output (the student's prediction or a teacher's logits)."""
LABEL = "label"
"""Teacher source of a supervised term: the term compares the student with the ground truth."""
ALL_TEACHERS = "all"
"""``LossTerm.teachers`` value that passes the list of every teacher's output to the loss."""


@dataclass
class LossTerm:
    """One named, weighted term of a distillation objective.

    The term contributes ``weight * scale * loss(student_value, teacher_value)`` to the total loss.
    ``weight`` and ``scale`` are plain attributes so that handlers change them during training
    (``medkd_ext.handlers.RampHandler``): keep the paper's coefficient in ``weight`` and put a curriculum
    factor shared by several terms in ``scale``.

    Args:
        name: key under which the term's unweighted value is returned in ``engine.state.output``.
        loss: a callable ``loss(student_value, teacher_value) -> scalar``, typically a ``medkd_ext.losses`` module.
        weight: coefficient of the term.
        student: ``"pred"`` for the student's output, a module path of the student (a forward hook takes its
            output), or a sequence of those (the loss then receives a list, e.g. ``FSPLoss``).
        teacher: as ``student`` but on the teacher side, or a mapping teacher name -> such a value when teachers
            of different architectures are tapped at differently named layers; ``"label"`` makes the term
            supervised (``loss(student_value, label)``), in which case ``teachers`` is ignored.
        teachers: which teacher(s) the term compares with: a teacher's name or index, ``"all"`` (the loss
            receives a list with one value per teacher, e.g. ``MultiTeacherKDLoss``), or a sequence of names.
            ``None`` means the only teacher and is an error when there are several.
        embed: global-average-pool every value to ``(B, C)`` and concatenate a list of them along channels,
            giving one multi-level embedding per side (for ``SimilarityKLLoss`` and the relational losses).
        scale: second multiplicative factor, 1 by default (a curriculum ``c(t)``).
        min_batch: the fewest samples a batch needs for the term (relations between samples: 2 for RKD's distances,
            3 for its angles); a smaller batch, such as the last of an epoch, trains without the term (its value is
            logged as 0) instead of failing.
    """

    name: str
    loss: Callable[..., torch.Tensor]
    weight: float = 1.0
    student: str | Sequence[str] = PRED
    teacher: str | Sequence[str] | Mapping[str, str | Sequence[str]] = PRED
    teachers: int | str | Sequence[int | str] | None = None
    embed: bool = False
    scale: float = 1.0
    min_batch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"LossTerm: name must be a non-empty string, got {self.name!r}.")
        if not callable(self.loss):
            raise TypeError(f"LossTerm '{self.name}': loss must be callable, got {type(self.loss).__name__}.")
        if self.name in (Keys.IMAGE, Keys.LABEL, Keys.PRED, Keys.LOSS):
            raise ValueError(f"LossTerm: name '{self.name}' is reserved for engine.state.output; choose another.")
        check_positive_int(self.min_batch, f"LossTerm '{self.name}'", "min_batch")

    @property
    def supervised(self) -> bool:
        return isinstance(self.teacher, str) and self.teacher == LABEL


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class DistillationTrainer(SupervisedTrainer):
    """Knowledge-distillation trainer: student plus frozen teachers, and named, weighted loss terms.

    One iteration runs every teacher, then the student (features of the tapped student layers kept with their
    graph), evaluates every :class:`LossTerm` and backpropagates ``loss = sum_k weight_k * scale_k * term_k``.
    ``engine.state.output`` holds ``image``, ``label``, ``pred``, ``loss`` and each term's unweighted value under
    its name, so ``StatsHandler``/``TensorBoardStatsHandler`` with
    ``output_transform=medkd_ext.engines.loss_terms_output`` log every term.

    Teachers are frozen by wrapping each in :class:`~medkd_ext.networks.FrozenTeacher` (a teacher that already is
    one is used as it is): ``eval()`` and ``requires_grad=False`` (the given network is frozen in place), put back in
    ``eval()`` before every forward pass, so a handler that calls ``train()`` on them cannot change their BatchNorm
    statistics, run under ``torch.inference_mode()``, with outputs and tapped features cloned into ordinary tensors
    so that losses may use them. ``trainer.teachers`` maps each name to its ``FrozenTeacher``.

    Args:
        device: device of the student and the teachers (the config's ``device``).
        max_epochs: number of epochs.
        train_data_loader: loader of dict batches with ``image`` and ``label``.
        network: the student.
        optimizer: optimizer over the student's parameters **and** those of any loss with learnable adapters
            (``FitNetLoss``, ``FeatureAlignLoss``); missing adapters are reported at construction.
        teachers: a module, a sequence of modules (named ``"0"``, ``"1"``, ...) or a mapping name -> module; each is
            moved to ``device`` and frozen.
        loss_terms: :class:`LossTerm` objects or dicts with its fields (as written in a bundle config).
        loss_function: ignored placeholder kept for ``SupervisedTrainer`` compatibility; the supervised part of
            the objective is a term with ``teacher="label"``.
        teacher_cache: a :class:`~medkd_ext.engines.TeacherOutputCache` over the training loader's
            :class:`~medkd_ext.data.TeacherCacheDataset`: the teachers then run once per (case, view) and later
            epochs read their outputs. ``None`` (default): the teachers run on every batch.
        kwargs: every other ``SupervisedTrainer`` argument (``amp``, ``train_handlers``, ``inferer``, ...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        teachers: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
        loss_terms: Sequence[LossTerm | Mapping[str, Any]],
        loss_function: Callable | None = None,
        teacher_cache: TeacherOutputCache | None = None,
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
        self.teachers: dict[str, FrozenTeacher] = {
            name: _frozen(teacher.to(device)) for name, teacher in self._named_teachers(teachers).items()
        }
        terms = [t if isinstance(t, LossTerm) else LossTerm(**t) for t in loss_terms]
        if not terms:
            raise ValueError("DistillationTrainer: loss_terms is empty; give at least one LossTerm.")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"DistillationTrainer: loss term names must be unique, got {names}.")
        self.loss_terms: dict[str, LossTerm] = {t.name: t for t in terms}
        self._term_teachers = {t.name: self._resolve_teachers(t) for t in terms}
        for term in terms:
            if isinstance(term.loss, nn.Module):
                term.loss.to(device)
        self._check_adapters_optimised()

        student_layers = sorted({n for t in terms for n in _as_list(t.student) if n != PRED})
        self.student_taps = FeatureTaps(network, student_layers) if student_layers else None
        self.teacher_taps: dict[str, FeatureTaps] = {}
        for name, teacher in self.teachers.items():
            layers = sorted(
                {
                    n
                    for t in terms
                    if not t.supervised and name in self._term_teachers[t.name]
                    for n in self._teacher_layers(t, name)
                    if n != PRED
                }
            )
            if layers:
                self.teacher_taps[name] = FeatureTaps(teacher, layers)
        self._teacher_needs_pred = {
            name: any(
                not t.supervised and name in self._term_teachers[t.name] and PRED in self._teacher_layers(t, name)
                for t in terms
            )
            for name in self.teachers
        }
        self.teacher_cache = teacher_cache
        if teacher_cache is not None:
            teacher_cache.attach(self)

    @staticmethod
    def _named_teachers(teachers: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        if isinstance(teachers, nn.Module):
            named = {"0": teachers}
        elif isinstance(teachers, Mapping):
            named = {str(k): v for k, v in teachers.items()}
        else:
            named = {str(i): t for i, t in enumerate(teachers)}
        for name, teacher in named.items():
            if not isinstance(teacher, nn.Module):
                raise TypeError(f"DistillationTrainer: teacher '{name}' is a {type(teacher).__name__}, not a Module.")
        return named

    def _resolve_teachers(self, term: LossTerm) -> list[str]:
        if term.supervised:
            return []
        names = list(self.teachers)
        if not names:
            raise ValueError(f"Loss term '{term.name}' compares with a teacher, but no teacher was given.")
        if term.teachers is None:
            if len(names) > 1:
                raise ValueError(
                    f"Loss term '{term.name}': there are {len(names)} teachers {names}; set its 'teachers' to one "
                    f"name, a list of names, or '{ALL_TEACHERS}'."
                )
            return names
        if isinstance(term.teachers, str) and term.teachers == ALL_TEACHERS:
            return names
        wanted = [term.teachers] if isinstance(term.teachers, (int, str)) else list(term.teachers)
        resolved = []
        for w in wanted:
            key = names[w] if isinstance(w, int) and 0 <= w < len(names) else str(w)
            if key not in self.teachers:
                raise ValueError(f"Loss term '{term.name}': teacher {w!r} does not exist; teachers are {names}.")
            resolved.append(key)
        return resolved

    @staticmethod
    def _teacher_spec(term: LossTerm, teacher_name: str) -> str | Sequence[str]:
        if isinstance(term.teacher, Mapping):
            if teacher_name not in term.teacher:
                raise ValueError(
                    f"Loss term '{term.name}' names layers for teachers {list(term.teacher)} but not for "
                    f"teacher '{teacher_name}'."
                )
            return term.teacher[teacher_name]
        return term.teacher

    def _teacher_layers(self, term: LossTerm, teacher_name: str) -> list[str]:
        return _as_list(self._teacher_spec(term, teacher_name))

    def _check_adapters_optimised(self) -> None:
        optimised = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        for term in self.loss_terms.values():
            if not isinstance(term.loss, nn.Module):
                continue
            missing = [n for n, p in term.loss.named_parameters() if p.requires_grad and id(p) not in optimised]
            if missing:
                raise ValueError(
                    f"Loss term '{term.name}' has learnable parameters {missing[:4]} that the optimizer does not "
                    "update; build the optimizer over the student's and the loss's parameters, e.g. "
                    "\"$list(@network.parameters()) + list(@<loss id>.parameters())\"."
                )

    def teacher_sources(self, term_name: str) -> list[tuple[str, str]]:
        """The (teacher name, source) pairs loss term ``term_name`` reads: ``"pred"`` or a tapped layer of each of its
        teachers; empty for a supervised term."""
        term = self.loss_terms[term_name]
        if term.supervised:
            return []
        names = self._term_teachers[term_name]
        return [(name, source) for name in names for source in self._teacher_layers(term, name)]

    def _run_teachers(
        self, inputs: torch.Tensor, args: tuple, kwargs: dict, names: Iterable[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each teacher's output and tapped features, as ordinary tensors without autograd history (only the teachers
        ``names`` when given)."""
        outputs: dict[str, dict[str, Any]] = {}
        wanted = None if names is None else set(names)
        for name, teacher in self.teachers.items():
            if wanted is not None and name not in wanted:
                continue
            pred = self.inferer(inputs, teacher, *args, **kwargs)
            values: dict[str, Any] = {PRED: pred} if self._teacher_needs_pred[name] else {}
            if name in self.teacher_taps:
                values.update(self.teacher_taps[name].features)
            outputs[name] = values
        return outputs

    def _term_value(self, term: LossTerm, student: dict[str, Any], teachers: dict[str, dict[str, Any]], label):
        s_names = _as_list(term.student)
        s_value = [student[n] for n in s_names]
        if term.embed:
            s_value = [torch.cat([global_avg_pool(v) for v in s_value], dim=1)]
        s_arg = s_value[0] if isinstance(term.student, str) or term.embed else s_value
        if term.supervised:
            return term.loss(s_arg, label)
        per_teacher = []
        for name in self._term_teachers[term.name]:
            spec = self._teacher_spec(term, name)
            t_value = [teachers[name][n] for n in _as_list(spec)]
            if term.embed:
                t_value = [torch.cat([global_avg_pool(v) for v in t_value], dim=1)]
            per_teacher.append(t_value[0] if isinstance(spec, str) or term.embed else t_value)
        several = isinstance(term.teachers, str) and term.teachers == ALL_TEACHERS
        several = several or (term.teachers is not None and not isinstance(term.teachers, (int, str)))
        return term.loss(s_arg, per_teacher if several else per_teacher[0])

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One distillation step; returns ``engine.state.output`` with every loss term by name."""
        if batchdata is None:
            raise ValueError("DistillationTrainer: no batch data for this iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        if engine.teacher_cache is None:
            teacher_values = engine._run_teachers(inputs, args, kwargs)
        else:
            teacher_values = engine.teacher_cache.teacher_values(engine, batchdata, inputs, args, kwargs)

        def _forward() -> dict[str, Any]:
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.state.output[Keys.PRED] = pred
            return {PRED: pred}

        def _loss(student_values: dict[str, Any]) -> None:
            if engine.student_taps is not None:
                student_values.update(engine.student_taps.features)
            total = None
            for term in engine.loss_terms.values():
                if inputs.shape[0] < term.min_batch:
                    engine.state.output[term.name] = torch.zeros((), device=inputs.device)
                    continue
                value = engine._term_value(term, student_values, teacher_values, targets).mean()
                engine.state.output[term.name] = value.detach()
                weighted = value * (float(term.weight) * float(term.scale))
                total = weighted if total is None else total + weighted
            if total is None:  # every term skipped: a step that changes nothing
                total = engine.state.output[Keys.PRED].sum() * 0.0
            engine.state.output[Keys.LOSS] = total

        engine.network.train()
        optimisation_step(engine, _forward, _loss)
        return engine.state.output


def _frozen(teacher: nn.Module) -> FrozenTeacher:
    return teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)


def loss_parameters(loss_terms: Sequence[LossTerm | Mapping[str, Any]]) -> list[nn.Parameter]:
    """The learnable parameters of the losses of ``loss_terms`` (adapters of ``FitNetLoss``, ``FeatureAlignLoss``),
    to give to the optimizer next to the student's: ``"$list(@network.parameters()) + loss_parameters(@terms)"``."""
    params: list[nn.Parameter] = []
    for term in loss_terms:
        loss = term.loss if isinstance(term, LossTerm) else term["loss"]
        if isinstance(loss, nn.Module):
            params.extend(p for p in loss.parameters() if p.requires_grad)
    return params


def loss_terms_output(output: Any) -> dict[str, float]:
    """``output_transform`` for ``StatsHandler``/``TensorBoardStatsHandler``: ``loss`` and every term, as floats.

    Works on the trainer's output before and after MONAI's decollation (a list of per-sample dicts).
    """
    first = output[0] if isinstance(output, list) else output
    skip = {Keys.IMAGE, Keys.LABEL, Keys.PRED}
    return {
        k: float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in first.items()
        if k not in skip and (isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1))
    }
