"""Tests of tierstore.torch (the DataLoader plugin)."""
