"""Reports: the paper's tables and plots from run directories, and the results registry.

Modules, each importing only those above it: :mod:`~loraprune.report.windows` (a run's
``window_losses.json``), :mod:`~loraprune.report.settings` (the settings that tell rows apart),
:mod:`~loraprune.report.rows` (``metrics.json`` files into rows, seeds averaged with their spread, the
paper's order), :mod:`~loraprune.report.uncertainty` (geometric means, document-bootstrap intervals, paired
differences against a reference row), :mod:`~loraprune.report.reference` (the published numbers),
:mod:`~loraprune.report.layout` (rows into one table per model, columns and notes),
:mod:`~loraprune.report.cells` (header and formatted cells), :mod:`~loraprune.report.markdown`,
:mod:`~loraprune.report.latex`, :mod:`~loraprune.report.plots` (PNG figures),
:mod:`~loraprune.cli.table` (the ``loraprune-table`` command), :mod:`~loraprune.report.registry` (the
``results/`` registry: adding runs, rendering its tables) and :mod:`~loraprune.cli.results` (the
``loraprune-results`` command); :mod:`~loraprune.report.sweep` counts a sweep's failed jobs when it ends
(a Hydra callback). Column labels and the reading of one ``metrics.json`` live in the run layer,
:mod:`loraprune.run.results`.
"""
