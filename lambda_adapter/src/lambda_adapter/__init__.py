"""Deadline-bounded idempotency for AWS Lambda Python functions, through idemgate."""
