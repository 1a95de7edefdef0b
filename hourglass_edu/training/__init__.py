"""Training a language model: settings, precision, evaluation, checkpoints, the loop, fine-tuning.

One module per concept, in the order a run uses them:

- `config`: `TrainConfig` (every setting of a run), `PRESETS`, `build_model`;
- `precision`: device and bf16 / fp16 / fp32 choice;
- `evaluation`: the loss, bits per character (quick, whole split, long context), `History`;
- `optimization`: AdamW parameter groups and the learning-rate schedule;
- `randomness`: the run's own batch and dropout random states;
- `checkpoints`: save, load and validate, the run-folder lock, `load_model`;
- `distributed`: data parallelism under torchrun (`process_group`, the global batch's split);
- `trainer`: `Trainer` and `train(model, data, config)`;
- `finetuning`: `prepare_finetuning`, `characters_to_add` and `extend_vocabulary`.

Everything public is importable from `hourglass_edu.training` directly.
"""

from hourglass_edu.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    RESUMABLE_CHANGES,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    run_folder_lock,
    save_checkpoint,
    validate_checkpoint,
)
from hourglass_edu.training.config import (
    PRECISIONS,
    PRESETS,
    Preset,
    TrainConfig,
    build_model,
    get_preset,
)
from hourglass_edu.training.evaluation import (
    LN2,
    History,
    evaluate_bpc,
    evaluate_bpc_long_context,
    language_model_loss,
    long_context_windows,
)
from hourglass_edu.training.finetuning import (
    FineTuning,
    characters_to_add,
    extend_vocabulary,
    prepare_finetuning,
)
from hourglass_edu.training.optimization import learning_rate, parameter_groups
from hourglass_edu.training.precision import (
    autocast_context,
    cpu_has_fast_bf16,
    cuda_has_native_bf16,
    gradient_scaler,
    resolve_device,
    resolve_precision,
)
from hourglass_edu.training.trainer import Trainer, TrainingDiverged, train

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "LN2",
    "PRECISIONS",
    "PRESETS",
    "RESUMABLE_CHANGES",
    "FineTuning",
    "History",
    "Preset",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "autocast_context",
    "build_model",
    "characters_to_add",
    "cpu_has_fast_bf16",
    "cuda_has_native_bf16",
    "evaluate_bpc",
    "evaluate_bpc_long_context",
    "extend_vocabulary",
    "get_preset",
    "gradient_scaler",
    "language_model_loss",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "long_context_windows",
    "model_from_checkpoint",
    "parameter_groups",
    "prepare_finetuning",
    "resolve_device",
    "resolve_precision",
    "run_folder_lock",
    "save_checkpoint",
    "train",
    "validate_checkpoint",
]
