-- Runs once, when the postgres volume is first initialised: MLflow gets its own database beside the
-- API's users database (POSTGRES_DB), since both keep an alembic_version table.
CREATE DATABASE mlflow;
