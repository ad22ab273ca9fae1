"""Real services for tests and demos: PostgreSQL, S3 (moto, MinIO), OpenSearch.

Each module starts a real server as a child process on a free loopback port.
``scripts/services`` uses the same code to start them for a person.
"""
