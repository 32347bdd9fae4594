"""The suite's tests: a package, so that they import their shared helpers as tests.helpers."""
