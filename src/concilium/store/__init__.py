"""Everything a run keeps on disk under ``RUN/``: the explanation store, the run record, the
result tables, and :class:`Run`, the one way to open a run.

Why zarr (v3) for the maps: chunked N-d arrays on a plain directory, one file per chunk written
atomically, so a killed run loses at most the chunk in flight and reads touch only the chunks they
need; HDF5 corrupts a whole file on a kill mid-write and needs locking, and one
``.npy``/safetensors file per entry can be neither appended to nor read partially without
memory-mapping the lot.
"""

from concilium.store.entry import Entry
from concilium.store.hashing import canonical_json, params_hash
from concilium.store.manifest import RUN_FILE, RunInfo, select_split
from concilium.store.results import (
    ATTRIBUTE_COLUMNS,
    ATTRIBUTES_TABLE,
    COLUMNS,
    RESULTS_DIR,
    ResultsTable,
    group_rows,
    metric_params_hash,
    read_arrays,
    read_metrics,
    read_table,
    write_arrays,
    write_table,
)
from concilium.store.run import (
    Run,
    available_methods,
    member_cards,
    member_stack,
    read_maps,
    write_source,
)
from concilium.store.store import IDENTITY_META, STORE_NAME, ExplanationStore, library_versions

__all__ = [
    "ATTRIBUTES_TABLE",
    "ATTRIBUTE_COLUMNS",
    "COLUMNS",
    "IDENTITY_META",
    "RESULTS_DIR",
    "RUN_FILE",
    "STORE_NAME",
    "Entry",
    "ExplanationStore",
    "ResultsTable",
    "Run",
    "RunInfo",
    "available_methods",
    "canonical_json",
    "group_rows",
    "library_versions",
    "member_cards",
    "member_stack",
    "metric_params_hash",
    "params_hash",
    "read_arrays",
    "read_maps",
    "read_metrics",
    "read_table",
    "select_split",
    "write_arrays",
    "write_source",
    "write_table",
]
