"""Tasks built on the models: ``classification`` (train, evaluate, predict)."""
