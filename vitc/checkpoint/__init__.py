"""The checkpoint store: tags, completion markers, integrity, universal conversion, resume, the run lock."""
