"""What runs notebooks into run folders: profiles and flags, the papermill pipeline, stage sharing
between runs, sweeps and their jobs, the command line (``python -m improve_lib``), the workshop
check and the notebooks' output stripping."""
