"""Bytes → ParsedMail: MIME, template fields, quotes, classification."""
