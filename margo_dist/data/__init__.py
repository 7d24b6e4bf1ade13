"""Data stage: dataset readers/writers, validation, preparation, synthetic data."""
