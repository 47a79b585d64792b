"""The trace simulator: replays access traces against placement policies."""
