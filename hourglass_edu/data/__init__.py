"""Text in, token tensors out: corpora, the document split, the character tokenizer, batches.

The pipeline, in the order notebook 00 builds it, one module per step:

1. `corpora.load_corpus("haiku" | "lovecraft" | path)` finds the raw text and cuts it into
   documents: one poem, one story, one file. Registered corpora are pinned files that
   `download` finds on disk or fetches, checking every byte against a pinned sha256.
2. `corpora.split_documents` puts each document wholly in train or in validation, reproducibly.
3. `tokenizer.CharTokenizer` maps each character to an integer id. Documents are laid out as
   `<eot> doc1 <eot> doc2 <eot> ...`, so a model learns where a document starts and where it ends.
4. `batches.sample_batch` draws random windows for training; `batches.iter_eval_batches` walks
   the validation stream once, scoring every token exactly once.

`prepare_data` runs steps 1-3 in one call. Everything public is importable from here:
`from hourglass_edu.data import prepare_data, sample_batch`.
"""

from hourglass_edu.data.batches import iter_eval_batches, sample_batch
from hourglass_edu.data.corpora import CORPORA, load_corpus, prepare_data, split_documents
from hourglass_edu.data.tokenizer import EOT, CharTokenizer

__all__ = [
    "EOT",
    "CORPORA",
    "load_corpus",
    "split_documents",
    "CharTokenizer",
    "prepare_data",
    "sample_batch",
    "iter_eval_batches",
]
