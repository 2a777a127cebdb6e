"""Foundations every layer uses, knowing no stage of the study: the error type, atomic file writing,
checked inputs and values, the machine (cores, GPUs), the notebooks' parameter cells, the run folder's
layout and its manifest. Used by every notebook through the layers above."""
