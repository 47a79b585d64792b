"""Tests of tierstore.policy: the contract every policy keeps, each policy, the kernels."""
