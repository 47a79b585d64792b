"""Tests of tierstore.server."""
