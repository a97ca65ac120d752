"""PostgreSQL: where tenancy is enforced, and the only ways to a transaction.

engine.py     the app-role pool (`tenant()`: RLS-bound) and the owner pool (`system()`); commits in one place
models.py     the tables as SQLAlchemy Core metadata (the schema itself is owned by the migrations)
rls.py        the SQL of forced row-level security, used by the migrations
migrate.py    create the database, apply the revisions (`tenantry migrate`)
listener.py   one LISTEN connection per process: what the database announces, to whoever subscribed
"""
