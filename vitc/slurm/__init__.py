"""Job submission: render the shipped sbatch templates for a run, submit them, follow the job."""
