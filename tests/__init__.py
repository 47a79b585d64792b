"""tierstore test suite (a package, so shared suites import as ``tests.tiers.conformance``)."""
