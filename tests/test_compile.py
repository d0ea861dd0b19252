"""`train.compile`: torch.compile (inductor, here on the CPU) through DeepSpeed's engine.compile().

Compiling dominates these tests' time (a tiny model, but inductor builds C++ kernels on the CPU),
so there is one run that switches compile on and off across resumes.
"""

import pytest
from engine_runs import TINY_PATCHIFY, exported, metrics, write_config

from vitc.cli import main
from vitc.models.spec import get_spec, with_overrides
from vitc.models.vit import VisionTransformer


@pytest.mark.slow
def test_a_checkpoint_resumes_with_compile_switched_either_way(shards, tmp_path):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", shards, run, model=TINY_PATCHIFY,
                          schedule={"epochs": 1, "warmup_epochs": 0.2}, checkpoint={"every_steps": 2})
    # eager -> compiled (resumes an eager checkpoint) -> eager (resumes a compiled one)
    for compiled, steps in ((False, 2), (True, 4), (False, 6)):
        assert main(["train", str(config), f"train.compile={str(compiled).lower()}", f"train.max_steps={steps}"]) == 0
        assert [r["step"] for r in metrics(run)][-1] == steps
    weights = exported(run, tmp_path)
    dims = {k: v for k, v in TINY_PATCHIFY.items() if k not in ("name", "num_classes")}
    expected = VisionTransformer(with_overrides(get_spec("vit_p_1gf"), **dims, num_classes=10)).state_dict()
    assert weights.keys() == expected.keys()  # no `_orig_mod.` prefix from the compiled run


def test_compile_at_zero3_is_refused_in_one_line(shards, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run")
    assert main(["train", str(config), "train.compile=true", "train.zero_stage=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vitc: error: train.compile=true with ZeRO-3 is not supported")
