"""Training (docs/algorithms.md §4–6): the loop (:mod:`.loop`), its state and resume
(:mod:`.state`), the run directory and lock (:mod:`.rundir`), validation, the finishing steps,
watchers, EMA, data parallelism, checkpoints and exports (:mod:`.checkpoint`, with the one
``load_model``), training on users' own data (:mod:`.fit`) and speed (:mod:`.bench`)."""
