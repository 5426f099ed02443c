"""NormBench harness: configuration, jobs, evaluation engine and results."""
