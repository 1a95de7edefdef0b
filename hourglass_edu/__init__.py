"""hourglass_edu: a small, tested library for building a character-level Hourglass transformer.

The course notebooks build each piece by hand and then import it from here. See ARCHITECTURE.md
for which module holds which concept and which notebook teaches it.
"""

__version__ = "0.1.0"

from hourglass_edu.data import CharTokenizer, load_corpus, prepare_data  # noqa: E402, F401  (public API)
from hourglass_edu.generation import GenerationSettings, generate, stream  # noqa: E402, F401
from hourglass_edu.hourglass import HourglassConfig, HourglassLM  # noqa: E402, F401
