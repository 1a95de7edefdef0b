"""Training a language model: settings, precision, evaluation, checkpoints, the loop, fine-tuning.

One module per concept, in the order a run uses them:

- `config`: `TrainConfig` (every setting of a run), `PRESETS`, `build_model`;
- `precision`: device and bf16 / fp16 / fp32 choice, TF32 on CUDA;
- `evaluation`: the loss, bits per character (quick, whole split, long context), `History`;
- `optimization`: AdamW (parameter groups, fused on CUDA) and the learning-rate schedule;
- `randomness`: the run's own batch and dropout random states;
- `checkpoints`: save, load and validate, the run-folder lock, best.pt, `load_model`;
- `distributed`: data parallelism under torchrun (`process_group`, the global batch's split);
- `run_state`: `RunState`, where a run stands (step, tokens, clock, history) as checkpoints hold it;
- `stopping`: stop requests (Ctrl-C / SIGTERM, the processes' agreement), `RunInterrupted`,
  divergence and out of memory;
- `resuming`: what a running trainer's checkpoint holds, and how a run continues from one;
- `trainer`: `Trainer`, whose `train_step` is the step on one screen;
- `runs`: `train(model, data, config)`, one run from scratch or from its checkpoint;
- `finetuning`: `prepare_finetuning`, `characters_to_add` and `extend_vocabulary`.

`__all__` below is what a course notebook or script needs; everything else is imported from its
module (`from hourglass_edu.training.precision import choose_precision`).
"""

from hourglass_edu.training.checkpoints import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
)
from hourglass_edu.training.config import PRESETS, TrainConfig, build_model, get_preset
from hourglass_edu.training.evaluation import (
    History,
    evaluate_bpc,
    evaluate_bpc_long_context,
    language_model_loss,
)
from hourglass_edu.training.finetuning import (
    characters_to_add,
    extend_vocabulary,
    prepare_finetuning,
)
from hourglass_edu.training.optimization import learning_rate
from hourglass_edu.training.precision import resolve_precision
from hourglass_edu.training.runs import train
from hourglass_edu.training.stopping import TrainingDiverged, TrainingOutOfMemory

__all__ = [
    "CHECKPOINT_NAME",
    "PRESETS",
    "History",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingOutOfMemory",
    "build_model",
    "characters_to_add",
    "evaluate_bpc",
    "evaluate_bpc_long_context",
    "extend_vocabulary",
    "get_preset",
    "language_model_loss",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "prepare_finetuning",
    "resolve_precision",
    "train",
]
