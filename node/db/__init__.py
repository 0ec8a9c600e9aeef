"""The SQL database: models, engine and migrations."""
