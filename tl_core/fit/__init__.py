"""Fitting a classifier: the loop (loop.Fit), its state (state: Net, Sources, Progress) and its two phases
(probe_phase, finetune); its seams (tasks, batches, strategy, callbacks); layer-wise optimisation, probe
and prototype heads on frozen features, the run's images and how they validate, class weighting,
metrics, and what a finished fit writes."""
