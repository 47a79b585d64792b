"""Tests of tierstore.cli."""
