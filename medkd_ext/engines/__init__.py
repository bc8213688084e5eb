"""Ignite/MONAI trainers for distillation and the stage runner of multi-stage bundles.

Each bundle's own config helpers live in one submodule named after its method, imported by that bundle's configs
(``"$import medkd_ext.engines.<module>"``) and not re-exported here:

- ``medkd_ext.engines.roskd``: ``bundles/roskd_classification`` (method selection, noisy splits, teacher loading);
- ``medkd_ext.engines.attention_transfer``: ``bundles/attention_transfer_densenet`` (DenseNet teacher checkpoints,
  trainable layers, pre-trained weights);
- ``medkd_ext.engines.joint_teacher``: ``bundles/joint_teacher_seg`` (the multi-level distillation terms).
"""

from medkd_ext.engines.acceleration import acceleration
from medkd_ext.engines.adversarial import DomainAdversarialTrainer
from medkd_ext.engines.bss import BSS_TERM, BSSDistillationTrainer, bss_weight_scale, heo_kd_weight
from medkd_ext.engines.distillation import (
    ALL_TEACHERS,
    LABEL,
    PRED,
    DistillationTrainer,
    LossTerm,
    loss_parameters,
    loss_terms_output,
)
from medkd_ext.engines.multihead import DatasetRounds, MultiHeadTrainer
from medkd_ext.engines.online import MutualLearningTrainer, ONETrainer
from medkd_ext.engines.settings import (
    check_recorded,
    recorded,
    save_settings,
    settings_path,
    warn_if_reused_otherwise,
)
from medkd_ext.engines.stages import (
    Stage,
    as_flag,
    check_override_types,
    check_stage_output,
    check_writable,
    completion_path,
    current_config,
    disabled_stages,
    for_each,
    load_stage_output,
    locate_bundle,
    parse_overrides,
    run_stage,
    run_stages,
    set_num_threads,
    stage_config,
    stage_hint,
    stage_workflow,
)
from medkd_ext.engines.teacher_cache import TeacherOutputCache, teacher_fingerprint, teacher_output_cache, teacher_views

__all__ = [
    "acceleration",
    "DomainAdversarialTrainer",
    "DistillationTrainer",
    "LossTerm",
    "loss_terms_output",
    "PRED",
    "LABEL",
    "ALL_TEACHERS",
    "Stage",
    "as_flag",
    "check_recorded",
    "check_override_types",
    "check_stage_output",
    "check_writable",
    "current_config",
    "completion_path",
    "recorded",
    "save_settings",
    "settings_path",
    "warn_if_reused_otherwise",
    "disabled_stages",
    "parse_overrides",
    "for_each",
    "load_stage_output",
    "run_stage",
    "run_stages",
    "set_num_threads",
    "stage_config",
    "stage_hint",
    "stage_workflow",
    "locate_bundle",
    "loss_parameters",
    "MultiHeadTrainer",
    "DatasetRounds",
    "TeacherOutputCache",
    "teacher_fingerprint",
    "teacher_output_cache",
    "teacher_views",
    "BSS_TERM",
    "BSSDistillationTrainer",
    "bss_weight_scale",
    "heo_kd_weight",
    "MutualLearningTrainer",
    "ONETrainer",
]
