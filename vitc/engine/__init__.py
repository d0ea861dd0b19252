"""The training engine: DeepSpeed ZeRO wrapped once around a plain model (the only DeepSpeed user)."""
