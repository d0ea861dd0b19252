"""Precise BN statistics on the ranks of a torchrun job, each over its own share of the images.

Usage (under torchrun, gloo): python tests/precise_bn_probe.py OUT.safetensors
Rank 0 writes the recomputed BatchNorm buffers of `small_convnet()` and the image count. The model
and each rank's batches are functions of the seed alone, so a test can rebuild them.
"""

import sys

import torch
import torch.distributed as tdist
from safetensors.torch import save_file
from torch import nn

from vitc.engine.precise_bn import recompute_bn_stats

BATCHES_PER_RANK, BATCH = 3, 4


def small_convnet() -> nn.Module:
    """Two BatchNorm layers, the second fed by the first (as in ViT_C's stem)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU())


def rank_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1000 + rank)
    return [(2 + 3 * torch.randn(BATCH, 3, 16, 16, generator=generator), torch.zeros(BATCH))
            for _ in range(BATCHES_PER_RANK)]


if __name__ == "__main__":
    tdist.init_process_group("gloo")
    model = small_convnet()
    cost = recompute_bn_stats(model, rank_batches(tdist.get_rank()), lambda x, dtype: x.to(dtype))
    if tdist.get_rank() == 0:
        buffers = {k: v for k, v in model.state_dict().items() if "running" in k}
        save_file(buffers, sys.argv[1], metadata={"images": str(cost.images)})
    tdist.destroy_process_group()
