"""moose_lib.clients' module path (`millrace.clients.redis_client` holds MooseCache)."""
