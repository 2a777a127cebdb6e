"""Blinded expert review of generated images: the paper's Tables 3 and 4 made by experts, with uncertainty.

The paper's plausibility numbers are per-class percentages judged by one expert (Label Studio, written
criteria; an image failing any criterion is implausible). This package gives experts the same procedure,
blinded to the arm, in JupyterLab or in Label Studio, and turns their judgments into the paper's tables:

* :mod:`~improve_lib.plausibility.review.tasks`: the criteria, the blinded tasks and the reviewers' judgment files;
* :mod:`~improve_lib.plausibility.review.app`: the ipywidgets review app;
* :mod:`~improve_lib.plausibility.review.label_studio`: the same tasks for Label Studio, and its exports back;
* :mod:`~improve_lib.plausibility.review.tables`: per-class plausibility tables with Wilson intervals, and a figure;
* :mod:`~improve_lib.plausibility.review.agreement`: Cohen's kappa between two reviewers.
"""
