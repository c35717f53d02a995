"""The learned object and how it runs (docs/algorithms.md §2): the model base class and the
paper's Gaussian chain (:mod:`.model`), the network bodies and per-step batch norm
(:mod:`.nets`), the factorial distributions (:mod:`.distributions`) and the sampler
(:mod:`.sampler`)."""
