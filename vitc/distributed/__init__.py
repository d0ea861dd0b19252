"""The distributed runtime of one process: its rank, world and device (env) and the signals it obeys."""
