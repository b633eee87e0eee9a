"""Results store, W&B logging and the static leaderboard site."""
