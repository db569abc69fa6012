"""Schedulers that run a job: the local one here, SLURM through sbatch elsewhere."""
