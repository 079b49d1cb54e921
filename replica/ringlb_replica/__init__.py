"""ringlb replica: the small Flask server the balancer routes to."""
