"""Everything that happens after the study: the export folder, its figures, model files and
report, the artifact links and the dashboard note. `python -m search.export` is `__main__`.

Nothing is imported here, so `python -m search.export --help` answers before torch is imported.
"""
