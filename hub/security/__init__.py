"""Security: clients and tokens (OAuth 2.0 / SMART), authorization policy, and the audit log."""
