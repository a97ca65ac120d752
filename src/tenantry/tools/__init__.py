"""The built-in tenant tools, one small module each, and what every tool is handed (`base.py`).

Every statement a tool runs goes through `Database.tenant()`, so RLS decides which rows exist.
"""
