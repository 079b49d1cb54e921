"""ringlb balancer: routes HTTP requests to replicas by consistent hashing."""
