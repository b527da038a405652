"""Anomaly-detection models: ProxyAno and the baselines, each in its own subpackage (anomalib's layout)."""
