"""Medical plausibility of the samples (notebook 07): the synthetic cells' pixel checker, the real datasets'
morphometry and plausible regions, the scoring of a run's samples by either instrument, and the blinded
expert review (``review``)."""
