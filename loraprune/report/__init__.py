"""Reports: rows from run directories, Markdown/LaTeX tables, plots, the table CLI."""
