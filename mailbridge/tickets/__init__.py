"""Cases (tickets), their messages, evidence and events."""
