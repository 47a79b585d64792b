"""Tests of tierstore.tiers: one conformance suite bound to every tier."""
