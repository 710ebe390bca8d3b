"""Process-wide locks around loading: one for every from_pretrained, one per model while it loads."""
from __future__ import annotations

import threading
import weakref

# transformers builds a model inside context managers that swap process-wide attributes and put them back on
# exit (5.24's get_init_context: no_tie_weights makes PreTrainedModel.tie_weights a no-op,
# meta_device_safe_creation_ops replaces torch.linspace, local_torch_dtype sets the default dtype). Two loads
# that overlap see each other's swaps: a model whose tie_weights ran as the no-op keeps its output layer on the
# meta device ("Cannot copy out of meta tensor"), and interleaved restores can leave a swap in place for good,
# so every later load fails until a restart. A lock per model cannot prevent that between two different models,
# so every from_pretrained of a model or tokenizer in this process runs under this one lock.
FROM_PRETRAINED = threading.Lock()

# One lock per resolved model (its cache key), held while it is converted or loaded, so two sessions asking for
# the same cold model load it once. Weak values: a lock lives only while someone loads, so names typed by
# strangers do not pile up locks.
_MODEL_LOCKS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(key: str) -> threading.RLock:
    """The lock of one resolved model; re-entrant, since loading converts under the same lock."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(key)
        if lock is None:
            lock = _MODEL_LOCKS[key] = threading.RLock()
        return lock
