"""OpenSearch: the client adapter (every call to the node goes through it) and reindex."""
