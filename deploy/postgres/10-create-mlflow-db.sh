#!/bin/sh
# Run once by the postgres image when the data volume is new (/docker-entrypoint-initdb.d/): the
# portal's database is POSTGRES_DB; MLflow's tracking store gets its own, MLFLOW_DB (default mlflow),
# owned by the same user. To add it to an existing volume, run the same CREATE DATABASE by hand.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set db="${MLFLOW_DB:-mlflow}" --set owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
