"""The chunked, resumable explanation store of a run (``RUN/explanations.zarr``).

Why zarr (v3): chunked N-d arrays on a plain directory, one file per chunk written atomically, so
a killed run loses at most the chunk in flight and reads touch only the chunks they need; HDF5
corrupts a whole file on a kill mid-write and needs locking, and one ``.npy``/safetensors file
per entry can be neither appended to nor read partially without memory-mapping the lot.
"""

from concilium.store.entry import Entry
from concilium.store.hashing import canonical_json, params_hash
from concilium.store.store import IDENTITY_META, STORE_NAME, ExplanationStore, library_versions

__all__ = [
    "IDENTITY_META",
    "STORE_NAME",
    "Entry",
    "ExplanationStore",
    "canonical_json",
    "library_versions",
    "params_hash",
]
