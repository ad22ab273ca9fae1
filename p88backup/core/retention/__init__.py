"""Retention: pure policies (GFS for dumps, count/window for base backups) and expire, which applies them."""
