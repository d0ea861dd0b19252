"""The paper's optimizability sweep (§5.3, Table 4, Appendix E): sample optimizer settings, train,
collect errors, plot EDFs and write a report.

`vitc sweep make` (make.py) -> `vitc sweep run` (run.py) -> `vitc sweep collect` (collect.py) ->
`vitc sweep plot` (plot.py, with the EDF maths in edf.py) and `vitc sweep report` (report.py, over
analysis.py). docs/pipelines.md shows a whole sweep.
"""
