"""The workshop: tools around the pipeline, none of them a stage. Benchmarks (:mod:`.bench`), SLURM sweeps
(:mod:`.cluster`), the experiment runner behind scripts/offline.py (:mod:`.runner`) and the recovery of a killed
queue worker (:mod:`.queue_recovery`), tuning on the validation split (:mod:`.tuning`), the generated references
(:mod:`.reference`, :mod:`.artifacts`), readers of finished runs (:mod:`.runs`, :mod:`.sweep_report`) and the
``dvc`` they call (:mod:`.dvc`). The workshop may import the pipeline; no pipeline module imports the workshop."""
