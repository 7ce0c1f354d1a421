"""The research core: neurons, the QSNN model (two executions), LR schedules, the training loop, efficiency."""
