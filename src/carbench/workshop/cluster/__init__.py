"""Past one machine: sweeps as SLURM jobs (:mod:`.slurm` submits and collects, :mod:`.job` runs inside each job).

DVC runs experiments on local workers only, so a cluster sweep is one scheduler job per experiment, each in its
own clone: ``dvc exp run --pull --allow-missing``, then ``dvc exp push``; a reviewer ``dvc exp pull``s them
(docs/cluster.md).
"""
