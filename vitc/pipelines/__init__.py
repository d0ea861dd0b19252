"""Chains of trainings: the pretrain -> finetune pipeline, and the child-process runner it shares
with sweeps. Each training in a chain is one `vitc train` run of the engine; a chain decides what
to run next from the run's outcome (RUN_DIR/outcome.json), never from the engine's internals."""
