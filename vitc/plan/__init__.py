"""`vitc plan`: memory, time and cost of a run at cluster scale, before it is booked. Torch-free:
it runs on a login node (tests/test_boundaries.py checks that nothing here imports torch)."""
