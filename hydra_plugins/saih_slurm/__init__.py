"""A Hydra launcher that gives each job of a sweep its own SLURM nodes and tasks."""
