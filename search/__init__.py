"""The search service: settings, search space, objective, study, command-line entry points."""
