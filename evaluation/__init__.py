"""Evaluation of trained or published models on physics quantities, separate from profiling (speed and memory).

- ``evaluation.metrics``: accuracy, AUC and background rejection from a ``weaver --predict`` output;
- ``evaluation.regression_metrics``: angular and entry-point resolution of track-regression predictions;
- ``evaluation.track_baseline``: the classical track fit, scored with the same metrics;
- ``evaluation.dsa_accuracy``: dense ParT vs DSA-ParT test accuracy after identical ``weaver`` training.
- ``evaluation.track_budget``: the track models' resolution against a CPU training budget (real ``weaver`` runs).

``evaluation`` may use ``profiling``'s loading helpers; ``profiling`` imports ``evaluation`` only where a table
combines speed with physics (``profiling.compare``, ``profiling.tagger_rates``).
"""
