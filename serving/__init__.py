"""What a registered model version carries for clients: the MLflow pyfunc model (models from code)."""
