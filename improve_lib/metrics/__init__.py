"""What the samples are worth, measured (notebook 06): train-on-synthetic-test-on-real classifiers, scores
with bootstrap intervals, fidelity and diversity in an encoder's space, the copy check, the tone of the
images, and the paper's own Tables 3-6 to hold them against."""
