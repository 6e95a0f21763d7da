"""The data engine: preparation into an Arrow cache, sampling, loading."""
