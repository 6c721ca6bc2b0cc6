"""Property-test kit for nlframe plugins: hypothesis strategies, assertions and
conformance suites (also exposed as a pytest plugin, ``--nlframe-conformance``)."""
