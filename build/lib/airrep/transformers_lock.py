"""One process-wide lock around building and loading transformers models.

transformers 5 builds a model inside context managers that patch process-wide state for
the duration: ``no_tie_weights`` replaces ``PreTrainedModel.tie_weights`` on the class,
``meta_device_safe_creation_ops`` replaces ``torch.linspace``, and ``local_torch_dtype`` sets
torch's default dtype. Each saves "the original" on entry and puts it back on exit, so two
threads loading at once can restore in the wrong order and leave ``tie_weights`` a no-op for
the rest of the process. Every tied model built afterwards (a Llama with
``tie_word_embeddings``) then keeps an untied ``lm_head`` that loads as a meta tensor.

The pipeline loads models from threads (two promotions that each load the champion, a
Dask worker with several threads), so every construction and ``from_pretrained`` in
airrep holds :data:`TRANSFORMERS_LOCK`. It is re-entrant because a load may construct.
"""

from __future__ import annotations

import threading

TRANSFORMERS_LOCK = threading.RLock()
