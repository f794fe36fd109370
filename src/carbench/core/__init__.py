"""The core every stage and command uses: the guarded entry point (:mod:`.cli`), stop signals (:mod:`.signals`),
errors and warnings (:mod:`.errors`), atomic output (:mod:`.io`), device and seeding (:mod:`.runtime`), the stage
log (:mod:`.timing`) and the metrics (:mod:`.metrics`). It imports nothing else of carbench."""
