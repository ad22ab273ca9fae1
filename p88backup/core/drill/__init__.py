"""Restore drills: the latest dump and the latest base backup + WAL restored into scratch clusters,
checked, measured (RTO, RPO), reported in the catalog, and always cleaned up."""
