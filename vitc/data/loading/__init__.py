"""Reading shards into training: epoch plans, worker streams, decode and augmentation (docs/loader.md)."""
