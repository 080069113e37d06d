"""The pipeline stages that `dvc repro` and the Prefect flows run: prepare, train, stream, evaluate."""
