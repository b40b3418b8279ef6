"""Tests for mailbridge.sla: calendars, response clocks, escalation and closing."""
