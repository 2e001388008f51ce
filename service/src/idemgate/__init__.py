"""idemgate: the HTTP idempotency gateway."""
