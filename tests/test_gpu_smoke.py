"""tools/gpu_smoke.sh's CPU path (`python -m vitc.bench.gpu_smoke --cpu`) runs and passes here, so
the script a person runs in the first hour on a GPU node does not rot."""

import re

import pytest

from vitc.bench.gpu_smoke import main

CHECKS = ("host syncs", "universal resume", "bf16 numerics", "JPEG decode", "ZeRO 0-3 steps", "export ZeRO-1",
          "export ZeRO-3", "compile", "MFU")


@pytest.mark.slow
def test_the_gpu_smoke_script_passes_on_the_cpu_path(tmp_path, capsys):
    assert main(["--cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    status = {name: st for st, name in re.findall(r"^(PASS|FAIL|SKIP) (.+?) \(\d+ s\):", out, re.MULTILINE)}
    assert set(status) == set(CHECKS)
    assert status["compile"] == "SKIP"  # inductor's C++ build on a CPU: tests/test_compile.py
    assert all(status[c] == "PASS" for c in CHECKS if c != "compile"), out
    assert "0 host syncs per steady-state step" in out
    assert re.search(r"vit_c_1gf at batch 4: measured \d+\.\d% of peak, plan predicts 40\.0%", out)
    assert re.search(r"vit_c_1gf on 16 × 8 with kernels at [\d.]+ of peak: plan predicts \d+\.\d% MFU "
                     r"\(`vitc plan vit_c_1gf --gpu cpu --nodes 16 --gpus-per-node 8 --mfu [\d.]+", out)
