"""BatchNorm over the global batch: torch's SyncBatchNorm on CUDA, GlooSyncBatchNorm on CPU
processes.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ganctl.distributed.world import WORLD


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of every rank's batch together, for CPU
    processes (torch's SyncBatchNorm runs on CUDA alone). Two all-reduces with autograd
    (torch.distributed.nn), so the gradient flows through the shared statistics as with one
    process: the per-channel sums and the count give the global mean, then the sums of squared
    deviations from it give the variance. (E[x²] - mean² in one all-reduce cancels for a channel
    whose mean is large against its spread: runs on 1 and 2 processes drifted apart by 1e-3.)
    Evaluation, and a single process, are plain BatchNorm. Its tensors are BatchNorm's:
    checkpoints load either way."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected a 2D or higher input (got {input.dim()}D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not WORLD.active:
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        sums = _summed(torch.cat([x.sum(dims), x.new_tensor([x.numel() // channels])]))
        total = sums[-1]
        mean = sums[:channels] / total
        deviation = x - mean.view(shape)
        var = _summed((deviation * deviation).sum(dims)) / total  # biased, as BatchNorm's
        y = deviation * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._track(mean.detach(), var.detach(), total)
        return y

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        """The running statistics as BatchNorm keeps them: the unbiased variance."""
        tracked = self.num_batches_tracked
        assert tracked is not None and self.running_var is not None
        tracked.add_(1)
        m = 1.0 / float(tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)  # type: ignore[union-attr]
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


def _summed(t: torch.Tensor) -> torch.Tensor:
    """t summed over the ranks, differentiable: the gradient is summed back to every rank."""
    from torch.distributed.nn.functional import all_reduce  # noqa: PLC0415

    with warnings.catch_warnings():  # torch marks it deprecated; its successor lacks autograd
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """net with every BatchNorm computing its statistics over the global batch: torch's
    SyncBatchNorm on CUDA, GlooSyncBatchNorm on CPU processes."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlooSyncBatchNorm):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(net, name, synced.to(device))
        else:
            sync_batchnorm(child, device)
    return net
