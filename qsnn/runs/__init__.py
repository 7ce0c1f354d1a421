"""Run management: the config schema, command line, experiments and trials, run-folder files, tuning, sweeps."""
