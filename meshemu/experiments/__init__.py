"""Experiments: declarative specs, a runner, results, plots and reports."""
