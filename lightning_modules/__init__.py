"""Data module and classifiers: everything below the search, nothing that knows about Optuna."""
