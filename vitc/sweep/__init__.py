"""The paper's optimizability sweep (SPEC §2): sample optimizer settings, train, collect errors, plot EDFs.

`vitc sweep make` (make.py) -> `vitc sweep run` (run.py) -> `vitc sweep collect` (collect.py) ->
`vitc sweep plot` (plot.py, with the EDF maths in edf.py). docs/pipelines.md shows a whole sweep.
"""
