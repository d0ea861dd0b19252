"""Precise BatchNorm statistics (pycls BN.USE_PRECISE_STATS, branch `vitconfigs`, commit 206d0db):
on two ranks, each over its own images, the recomputed statistics are those of all the images."""


import pytest
import torch
from engine_runs import ROOT, run_ranks, torchrun_command
from precise_bn_probe import rank_batches, small_convnet
from safetensors import safe_open
from torch import nn

from vitc.config import load_config
from vitc.engine.optim import freeze
from vitc.engine.precise_bn import batches_per_rank, recompute_bn_stats
from vitc.errors import VitcError


def direct_statistics(batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each BatchNorm's inputs over all batches (forward in training mode, as pycls), concatenated,
    then torch's own mean and unbiased variance per channel."""
    model = small_convnet()
    inputs: dict[str, list[torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_pre_hook(lambda _m, x, name=name: inputs.setdefault(name, []).append(x[0].double()))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    stats = {}
    for name, seen in inputs.items():
        channels_last = torch.cat(seen).transpose(0, 1).reshape(seen[0].shape[1], -1)
        stats[f"{name}.running_mean"] = channels_last.mean(dim=1)
        stats[f"{name}.running_var"] = channels_last.var(dim=1)
    return stats


@pytest.mark.slow
def test_precise_bn_on_two_ranks_equals_the_statistics_of_all_their_images(tmp_path):
    out = tmp_path / "bn.safetensors"
    result = run_ranks([*torchrun_command(2), str(ROOT / "tests" / "precise_bn_probe.py"), str(out)])
    assert result.returncode == 0, result.stderr[-4000:]
    expected = direct_statistics([images for rank in (0, 1) for images, _ in rank_batches(rank)])
    with safe_open(str(out), "pt") as recomputed:
        assert int(recomputed.metadata()["images"]) == 2 * 3 * 4
        assert sorted(recomputed.keys()) == sorted(expected)
        for key, value in expected.items():
            torch.testing.assert_close(recomputed.get_tensor(key).double(), value, rtol=1e-5, atol=1e-6)


def test_precise_bn_uses_the_authors_8192_images_by_default_and_0_turns_it_off():
    assert load_config(None).eval.precise_bn_samples == 8192  # pycls BN.NUM_SAMPLES_PRECISE
    assert load_config(None, ["eval.precise_bn_samples=0"]).eval.precise_bn_samples == 0
    with pytest.raises(VitcError, match="eval.precise_bn_samples"):
        load_config(None, ["eval.precise_bn_samples=-1"])
    # pycls: int(8192 / batch per GPU / GPUs) batches per rank, at most one epoch
    assert batches_per_rank(8192, 64, 8, available=1000) == 16
    assert batches_per_rank(8192, 8, 1, available=25) == 25


def test_a_frozen_batchnorm_keeps_its_statistics_through_a_recompute():
    torch.manual_seed(0)
    model = small_convnet()
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    frozen, free = norms[0], norms[-1]
    freeze(model, [frozen])
    before = {n: model.get_submodule(n).running_mean.clone() for n in norms}
    with torch.no_grad():
        recompute_bn_stats(model, [(torch.randn(8, 3, 16, 16) + 3, None)], lambda x, dtype: x.to(dtype))
    assert torch.equal(model.get_submodule(frozen).running_mean, before[frozen])
    assert not torch.equal(model.get_submodule(free).running_mean, before[free])
