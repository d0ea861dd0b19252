"""DeepSpeed's own model-state memory estimators, for `vitc plan` (only vitc/engine imports deepspeed).

DeepSpeed has estimators for mixed-precision ZeRO-2 and ZeRO-3 without offload only; `vitc plan`
states the other cases itself (vitc/plan/memory.py) and cross-checks these two against its table.
"""

import contextlib
import sys


def deepspeed_model_states_bytes(total_params: int, largest_layer_params: int, stage: int,
                                 gpus_per_node: int, nodes: int) -> int | None:
    """Per-GPU bytes of 16-bit params, grads and fp32 optimizer states, or None for stage 0/1.

    The `*_all_cold` functions print a table; the functions they call return the numbers used here.
    """
    # DeepSpeed's logger binds sys.stdout when first imported; `vitc plan --format json` keeps
    # stdout for its data, so a first import here sends DeepSpeed's messages to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    if stage == 2:
        _, gpu_bytes = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False)
        return int(gpu_bytes)
    if stage == 3:
        _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
            cpu_offload=False, cpu_offload_params=False)
        return int(gpu_bytes)
    return None
