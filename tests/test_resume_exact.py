"""Resume is exact with the default recipe: a run killed with SIGKILL right after a mid-epoch
checkpoint and resumed saves, at a later step, the very state a straight run saves — parameters,
BatchNorm buffers, optimizer moments, EMA, the schedule (so the next step's lr), the RNG and the
data position — with random crops, flips, AutoAugment, MixUp/CutMix and a loader worker."""

import json
from pathlib import Path

import pytest
import torch
from engine_runs import TINY_CONV, kill_after_checkpoint, write_config
from safetensors.torch import load_file

from vitc.checkpoint import store as checkpoint
from vitc.cli import main
from vitc.config import load_config

MID_EPOCH = 8  # of 25 steps per epoch


def default_recipe() -> dict:
    """The shipped defaults of every augmentation key, undoing the engine tests' plain recipe."""
    d = load_config(None, []).data
    keys = ("crop_scale", "hflip", "auto_augment", "random_erasing", "mixup_alpha", "cutmix_alpha",
            "label_smoothing")
    return {k: getattr(d, k) for k in keys}


def saved_state(run_dir: Path, step: int) -> dict:
    """Every file of checkpoint `step`, loaded: DeepSpeed's model and optimizer files, the EMA weights."""
    tag_dir = checkpoint.checkpoint_root(run_dir) / checkpoint.tag_for(step)
    state = {}
    for path in sorted(tag_dir.iterdir()):
        if path.suffix == ".pt":
            state[path.name] = torch.load(path, map_location="cpu", weights_only=False)
        elif path.suffix == ".safetensors":
            state[path.name] = load_file(path)
        elif path.suffix == ".json":
            state[path.name] = json.loads(path.read_text())
    return state


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded states differ: tensors bit for bit, everything else by ==."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys(), key=str)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if type(a) is type(b) and hasattr(a, "__dict__") and not isinstance(a, torch.Tensor):  # e.g. the loss scaler
        return differences(vars(a), vars(b), where)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r:.80} != {b!r:.80}"]


@pytest.mark.slow
def test_a_killed_and_resumed_run_saves_the_state_of_a_straight_run(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "straight", TINY_CONV,
                          data={**default_recipe(), "workers": 1}, train={"micro_batch": 8, "zero_stage": 1},
                          optim={"ema_alpha": 0.01, "ema_update_period": 2},
                          schedule={"epochs": 2, "warmup_epochs": 0.5}, checkpoint={"every_steps": 4},
                          eval={"every_epochs": 0})
    assert main(["train", str(config)]) == 0
    kill_after_checkpoint(config, tmp_path / "killed", MID_EPOCH)
    resumed_from = checkpoint.newest_checkpoint(tmp_path / "killed").step
    assert MID_EPOCH <= resumed_from < 25  # mid-epoch: the loader resumes inside the epoch
    assert main(["train", str(config), f"train.run_dir={tmp_path / 'killed'}"]) == 0

    straight, resumed = saved_state(tmp_path / "straight", 50), saved_state(tmp_path / "killed", 50)
    assert {"ema.safetensors", "mp_rank_00_model_states.pt"} <= straight.keys()
    model = straight["mp_rank_00_model_states.pt"]
    assert any("running_var" in k for k in model["module"]) and model["lr_scheduler"]["last_epoch"] == 50
    # the run directory is the only thing allowed to differ, and with it the checksum the
    # completion marker records for the file that holds it (the config is in the client state)
    for state in (straight, resumed):
        state["mp_rank_00_model_states.pt"]["config"]["train"]["run_dir"] = None
        state[checkpoint.MARKER]["files"]["mp_rank_00_model_states.pt"] = None
    assert differences(straight, resumed) == []
