"""Writing and checking shards: sources -> JPEGs -> `<prefix>-%06d.tar` + manifest (docs/shards.md)."""
