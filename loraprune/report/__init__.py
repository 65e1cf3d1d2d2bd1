"""Reports: the paper's tables and plots from run directories.

Modules, each importing only those above it: :mod:`~loraprune.report.rows` (``metrics.json`` files into
rows, seeds averaged, the paper's order), :mod:`~loraprune.report.reference` (the published numbers),
:mod:`~loraprune.report.layout` (rows into one table per model, columns and notes),
:mod:`~loraprune.report.cells` (header and formatted cells), :mod:`~loraprune.report.markdown`,
:mod:`~loraprune.report.latex`, :mod:`~loraprune.report.plots` (PNG figures) and
:mod:`~loraprune.report.cli` (the ``loraprune-table`` command); :mod:`~loraprune.report.sweep` counts a
sweep's failed jobs when it ends (a Hydra callback). Column labels and the reading of one
``metrics.json`` live in the run layer, :mod:`loraprune.run.results`.
"""
