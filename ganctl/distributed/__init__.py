"""Training on several processes with torch.distributed: torchrun's environment, the process
groups, and the few collectives the engine needs.

A run under torchrun (WORLD_SIZE > 1 in the environment) is data parallel: every rank holds the
same G and D, draws its shard of each global batch, and the gradients of each phase are
averaged over the ranks with one all-reduce of the flattened gradients before the optimizer
steps (as StyleGAN2-ADA does, rather than the DistributedDataParallel wrapper: a GAN step calls
D on reals and fakes with G or D frozen in between, which DDP's reducer does not allow without
find_unused_parameters and re-wrapping). The weights start from rank 0's and stay equal.

Control flow is decided together over a gloo group on the CPU (a per-step all-reduce of a few
integers that never waits on the GPU): a stop signal or --max-time on any rank stops every rank
at the same step; a divergence seen by any rank rolls every rank back. Rank 0 alone writes the
run directory, checkpoints, samples, metrics and progress, and evaluates; the others wait at a
barrier meanwhile. A rank that dies closes its sockets, and the others' next collective fails
at once with a one-line error (a rank that hangs: after GANCTL_DIST_TIMEOUT seconds). Joining
the process group fails the same way, in one line: torch's C++ log of the attempt is kept off
the terminal unless the join succeeds.

world.py is this process's place (WORLD, torchrun's environment) and joining the group;
collectives.py the collectives; batchnorm.py BatchNorm over the global batch; launcher.py
`ganctl train --gpus N`; reports.py the errors its ranks leave and its one line from them.
Everything is imported from here: `distributed.WORLD`, `distributed.setup`, ...
"""

from ganctl.distributed.batchnorm import GlooSyncBatchNorm, sync_batchnorm
from ganctl.distributed.collectives import (
    agree,
    average_gradients,
    barrier,
    broadcast_module,
    broadcast_object,
    collective,
    local_first,
    merge_features,
    share,
    split_batch,
    sum_over_ranks,
)
from ganctl.distributed.launcher import free_port, launch, without_option
from ganctl.distributed.reports import STOPPED, leave_report
from ganctl.distributed.world import (
    DEFAULT_TIMEOUT_S,
    LAUNCHED,
    MAX_TIMEOUT_S,
    REPORTS,
    SIGNAL_POLL_S,
    TIMEOUT_VARIABLE,
    WORLD,
    RankFailed,
    World,
    from_environment,
    setup,
    timeout_s,
)

__all__ = [
    "DEFAULT_TIMEOUT_S", "LAUNCHED", "MAX_TIMEOUT_S", "REPORTS", "SIGNAL_POLL_S", "STOPPED",
    "TIMEOUT_VARIABLE", "WORLD", "GlooSyncBatchNorm", "RankFailed", "World", "agree",
    "average_gradients", "barrier", "broadcast_module", "broadcast_object", "collective",
    "free_port", "from_environment", "launch", "leave_report", "local_first", "merge_features",
    "setup", "share", "split_batch", "sum_over_ranks", "sync_batchnorm", "timeout_s",
    "without_option",
]
