"""Opening an IMAP connection: verified TLS or STARTTLS (never a plaintext fallback), then login."""

from __future__ import annotations

import ssl
from contextlib import suppress

from imapclient import IMAPClient

from mailbridge.intake.imap_config import ImapAccount


def ssl_context(account: ImapAccount) -> ssl.SSLContext:
    """Verified TLS: system CAs plus the account's ca_file, hostname checked."""
    context = ssl.create_default_context()
    if account.ca_file is not None:
        context.load_verify_locations(cafile=str(account.ca_file))
    return context


def open_client(account: ImapAccount) -> IMAPClient:
    """A connected client, TLS in place as the account says, not logged in yet."""
    tls = account.security == "tls"
    client = IMAPClient(
        account.host,
        port=account.effective_port,
        ssl=tls,
        ssl_context=ssl_context(account) if tls else None,
        timeout=account.timeout,
    )
    client.normalise_times = False  # aware INTERNALDATEs, in the server's offset
    # imapclient turns imaplib's protocol trace on (debug=5): every response is
    # repr()-formatted before the logger decides to drop it, which triples the
    # memory a big FETCH takes and would put mail bodies in DEBUG logs.
    client._imap.debug = 0
    if account.security == "starttls":
        try:
            # Raises CapabilityError when the server has no STARTTLS: never
            # fall back to plaintext.
            client.starttls(ssl_context(account))
        except BaseException:
            shutdown(client)
            raise
    return client


def secret_of(account: ImapAccount) -> str:
    """What this login uses: a fresh OAuth token, or the password (CredentialError if none)."""
    return account.fetch_oauth_token() if account.uses_oauth else account.resolve_password()


def log_in(client: IMAPClient, account: ImapAccount, secret: str) -> None:
    """XOAUTH2 or LOGIN with the secret from secret_of() (LoginError when refused)."""
    if account.uses_oauth:
        client.oauth2_login(account.username, secret)
    else:
        client.login(account.username, secret)


def shutdown(client: IMAPClient) -> None:
    """Close the socket, whatever state it is in."""
    with suppress(Exception):
        client.shutdown()
