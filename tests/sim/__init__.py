"""Tests of tierstore.sim: trace files, sizing curves, sweeps and reports."""
