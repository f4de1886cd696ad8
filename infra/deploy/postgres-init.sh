#!/bin/sh
# The postgres image runs this once, when it initialises an empty data volume: a role and a
# database for the Prefect API and for MLflow (tracking store and model registry), each role
# owning only its own database. Passwords come from the container's environment (.env).
set -eu
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v prefect_password="$PREFECT_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
