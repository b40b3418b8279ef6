"""Where bytes arrive: SMTP/LMTP listener, IMAP poller, the ingest pipe."""
