"""Policy: findings + cluster state + safety budget -> actions. Pure (no Kubernetes, no HTTP)."""
