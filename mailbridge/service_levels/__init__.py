"""What the service levels are (seeds 000, 001, 003), as pure functions and typed config:
business calendars, response clocks, escalation and closing rules. No database: `rules`
validates with them, and `sla/` applies them to cases."""
