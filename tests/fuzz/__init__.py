"""Coverage-guided fuzz harnesses (atheris) for every parser of bytes from outside the proxy.

One module per target; see docs/fuzzing.md for the short run in the test suite and the long run.
"""
