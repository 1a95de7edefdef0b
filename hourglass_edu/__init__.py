"""hourglass_edu: a small, tested library for building a character-level Hourglass transformer.

The course notebooks build each piece by hand and then import it from here. See ARCHITECTURE.md
for which module holds which concept and which notebook teaches it.
"""

__version__ = "0.4.0"

from hourglass_edu.data import CharTokenizer, load_corpus, prepare_data  # noqa: E402
from hourglass_edu.generation import GenerationSettings, generate, stream  # noqa: E402
from hourglass_edu.hourglass import HourglassConfig, HourglassLM  # noqa: E402
from hourglass_edu.model_folders import export_model_folder, load_model_folder  # noqa: E402
from hourglass_edu.pretrained import list_pretrained, load_pretrained  # noqa: E402
from hourglass_edu.training import TrainConfig, load_model, train  # noqa: E402

__all__ = [
    "CharTokenizer",
    "GenerationSettings",
    "HourglassConfig",
    "HourglassLM",
    "TrainConfig",
    "export_model_folder",
    "generate",
    "list_pretrained",
    "load_corpus",
    "load_model",
    "load_model_folder",
    "load_pretrained",
    "prepare_data",
    "stream",
    "train",
]
