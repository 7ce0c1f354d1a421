"""Analysis of finished runs: the results table and the loss landscape."""
