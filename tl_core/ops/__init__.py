"""Operations: the workspace's storage, the run folder (the contract every other part reads and writes
through), the job queue and its OS locks, where runs execute (local workers or Ray), and who owns what
on a classroom server. The lowest layer after config: it knows nothing of models or training."""
