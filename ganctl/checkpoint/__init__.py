"""The checkpoint file format: one .safetensors file per save, written atomically, read without
pickle. Where checkpoints live in a run (and which one is newest) is rundir.py's.

Layout of a file: tensors `G.*`, `D.*`, `G_ema.*` (module state dicts), `opt_G.*`, `opt_D.*`
(optimizer state), `rng.*` and `state.*` (the rest of the training state); string metadata
`ganctl.version`, `ganctl.schema`, `ganctl.config` (JSON), `ganctl.step`, `ganctl.created`,
`ganctl.metrics` (JSON of the last logged record). Nothing here calls torch.load or pickle:
opening a stranger's checkpoint runs no code. A checkpoint is verified by streaming its checksum
from an open descriptor, and only the tensors a command needs are then read from that same
descriptor: sampling a 2 GB checkpoint holds G_ema's bytes, not the file's.

write.py writes a file; header.py parses and checks its header (Header); read.py opens,
verifies and reads it; state_dicts.py turns networks and optimizers into its tensors and back.
Everything is imported from here: `checkpoint.save`, `checkpoint.open_checkpoint`, ...
"""

from ganctl.checkpoint.header import (
    DTYPES,
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_TENSOR_BYTES,
    SCHEMA,
    SUFFIX,
    Header,
    check_metadata,
    dtype_name,
    shown,
)
from ganctl.checkpoint.read import (
    BLOCK_BYTES,
    CheckpointFile,
    load_tensors,
    open_checkpoint,
    read_header,
    read_metadata,
    verify,
)
from ganctl.checkpoint.state_dicts import (
    ADAM_MOMENTS,
    ADAM_STEP,
    DAMAGED,
    MAX_INDEX_DIGITS,
    SQUARED_MOMENTS,
    check_dtype,
    check_dtypes,
    check_finite,
    check_number,
    check_scalar,
    check_second_moments,
    check_shapes,
    load_module,
    load_optimizer,
    module_tensors,
    optimizer_tensors,
    require,
)
from ganctl.checkpoint.write import save

__all__ = [
    "ADAM_MOMENTS", "ADAM_STEP", "BLOCK_BYTES", "DAMAGED", "DTYPES", "MAX_DIMS", "MAX_HEADER_BYTES",
    "MAX_INDEX_DIGITS", "MAX_TENSOR_BYTES", "SCHEMA", "SQUARED_MOMENTS", "SUFFIX", "CheckpointFile",
    "Header", "check_dtype", "check_dtypes", "check_finite", "check_metadata", "check_number",
    "check_scalar", "check_second_moments", "check_shapes", "dtype_name", "load_module",
    "load_optimizer", "load_tensors", "module_tensors", "open_checkpoint", "optimizer_tensors",
    "read_header", "read_metadata", "require", "save", "shown", "verify",
]
