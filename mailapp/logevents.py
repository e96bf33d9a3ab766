"""
Stable names for log events, declared once.

Convention: every log call that matters to an operator passes one of these
constants as the ``log_event`` field::

    from mailapp import logevents
    log.info("listening {listener} on {address}",
             log_event=logevents.LISTENING, listener=name, address=address)

The name is ``<area>.<what happened>``, lower case with underscores. It is
what dashboards, alerts and tests match on, so a name never changes meaning
once released: a new meaning gets a new name. The human format string may
change freely. With JSON log output (``twistd --logger``) every field,
``log_event`` included, is kept.
"""

from __future__ import annotations

from typing import Final

# --- service lifecycle (mailapp.service) ---
STARTING: Final = "service.starting"
LISTENING: Final = "service.listening"
LISTEN_FAILED: Final = "service.listen_failed"
LISTENER_SKIPPED: Final = "service.listener_skipped"
NO_USERS: Final = "service.no_users"
STOPPING: Final = "service.stopping"
DRAIN_TIMEOUT: Final = "service.drain_timeout"
STOPPED: Final = "service.stopped"

# --- worker processes (mailapp.workers) ---
#: worker, pid: a worker process started.
WORKER_STARTED: Final = "workers.started"
#: worker, pid, status, ran_seconds, restart_in (None when the server is stopping): a worker process ended.
WORKER_ENDED: Final = "workers.ended"
#: worker, line: a line a worker wrote to its stderr (a crash before its log was set up, say).
WORKER_STDERR: Final = "workers.stderr"

# --- TLS material (mailapp.tls) ---
CERTIFICATE_GENERATED: Final = "tls.certificate_generated"

# --- sender authentication on the MX (mailapp.authentication) ---
#: one message's SPF, DKIM and DMARC results; also: queue_id, client, spf,
#: spf_helo, dkim (one result per signature, comma-separated), dkim_domains,
#: dmarc, from_domain, policy, arc, action (deliver, junk, reject, tempfail),
#: forged_headers_removed, verify_seconds
AUTHENTICATION_CHECKED: Final = "authentication.checked"
#: a check failed unexpectedly (counted as a temperror); also: log_failure
AUTHENTICATION_FAILED: Final = "authentication.failed"

# --- the MX's checks before DATA (mailapp.postscreen) ---
# Every refusal carries action (reject, tempfail) and reason (dnsbl,
# early_talker, unauth_pipelining, greylist): the metric mailapp_spam_decisions_total
# counts them by those two fields (mailapp.metrics.SPAM_DECISIONS).
#: refused 554 5.7.1 for its listings; also: client, zone (the heaviest), score, listings (zone=code, ...), stage
POSTSCREEN_DNSBL_REFUSED: Final = "postscreen.dnsbl_refused"
#: a message refused 554 5.7.1 at the end of DATA for a URL in its body (reason dnsbl_url);
#: also: client, what (``URL domain x.test``), zone (the heaviest URL listing), score, listings (zone=code, ...)
POSTSCREEN_DNSBL_URL_REFUSED: Final = "postscreen.dnsbl_url_refused"
#: a message whose URLs could not be read (counted 0); also: client, log_failure
POSTSCREEN_DNSBL_URL_FAILED: Final = "postscreen.dnsbl_url_failed"
#: a blocklist lookup that failed or timed out (counted 0); also: zone, name, error
POSTSCREEN_DNSBL_FAILED: Final = "postscreen.dnsbl_failed"
#: a list answered 127.255.255.x (over quota, or queried through an open resolver), counted 0; logged once per zone and code; also: zone, code
POSTSCREEN_DNSBL_ERROR_CODE: Final = "postscreen.dnsbl_error_code"
#: a new triplet answered 451 4.7.1 at RCPT; also: client, network, sender, recipient
POSTSCREEN_GREYLISTED: Final = "postscreen.greylisted"
#: a retried triplet passed, its client network whitelisted; also: client, network, sender, recipient
POSTSCREEN_GREYLIST_PASSED: Final = "postscreen.greylist_passed"
#: the greylist database failed, the recipient passed; also: client, log_failure
POSTSCREEN_GREYLIST_FAILED: Final = "postscreen.greylist_failed"
#: a client that talked before the greeting, refused 554 5.5.1; also: client, waited (seconds)
POSTSCREEN_EARLY_TALKER: Final = "postscreen.early_talker"
#: a client that pipelined before PIPELINING was offered, refused 554 5.5.1; also: client, command
POSTSCREEN_UNAUTH_PIPELINING: Final = "postscreen.unauth_pipelining"

# --- names the design already promises to the protocol layers ---
SMTP_ACCEPTED: Final = "smtp.accepted"
#: queue_id, sender, delivered, refused (recipients), size, client: a message taken over LMTP, one reply per recipient.
LMTP_DELIVERED: Final = "lmtp.delivered"
#: client: an LMTP connection from an address neither loopback nor in the listener's allowed_clients.
LMTP_CLIENT_REFUSED: Final = "lmtp.client_refused"
SMTP_RCPT_REJECTED: Final = "smtp.rcpt_rejected"
#: a RCPT refused 550 5.7.1: the recipient's block list names the sender; also: sender, recipient, owner (whose list), pattern, client
SMTP_SENDER_BLOCKED: Final = "smtp.sender_blocked"
#: a RCPT whose allow list names the sender (later spam checks skip it); also: sender, recipient, owner, pattern, client
SMTP_SENDER_ALLOWED: Final = "smtp.sender_allowed"
#: MAIL FROM a local domain on the MX from an untrusted client; also: sender, client
SMTP_LOCAL_SENDER_REFUSED: Final = "smtp.local_sender_refused"
#: a message refused after its data (too big, too many hops, a header field too long); also: sender, client, reply
SMTP_DATA_REFUSED: Final = "smtp.data_refused"
#: MAIL FROM refused with 452 4.3.1: the state directory's disk has less than limits.min_free_disk free; also: free, client
SMTP_INSUFFICIENT_STORAGE: Final = "smtp.insufficient_storage"
#: MAIL FROM or the end of data refused with 451 4.7.1: an MX client past limits.mx_*_per_minute; also: client, what
SMTP_MX_RATE_LIMITED: Final = "smtp.mx_rate_limited"
AUTH_FAILED: Final = "auth.failed"
RELAY_DEFERRED: Final = "relay.deferred"

# --- accounts and authentication (mailapp.accounts) ---
ALIAS_BROKEN: Final = "accounts.alias_broken"
PASSWORD_REHASHED: Final = "auth.password_rehashed"
REHASH_FAILED: Final = "auth.rehash_failed"
#: a user changed their own password (the webmail's settings); also: account
PASSWORD_CHANGED: Final = "auth.password_changed"
#: the accounts database was migrated to a newer schema at open; also: path, old, new
ACCOUNTS_SCHEMA_UPGRADED: Final = "accounts.schema_upgraded"
#: a message or an IMAP APPEND/COPY/MOVE refused for a mailbox's quota; also: account, code
QUOTA_REFUSED: Final = "quota.refused"

# --- delivery and the store ---
DELIVERY_STORED: Final = "delivery.stored"
DELIVERY_FAILED: Final = "delivery.failed"
#: fields: queue_id, account, actions (what the script did), errors (its runtime errors, if any), steps
SIEVE_FILTERED: Final = "sieve.filtered"
#: fields: queue_id; running the scripts failed (not a script's own error): the message is delivered unfiltered
SIEVE_FAILED: Final = "sieve.failed"
#: fields: queue_id, account, target, error; a redirect that failed, kept instead
SIEVE_REDIRECT_FAILED: Final = "sieve.redirect_failed"
#: fields: queue_id, account, sender, reason (why no reply: list, bulk, null sender, ourselves, already answered, daily bound)
SIEVE_VACATION_SKIPPED: Final = "sieve.vacation_skipped"
#: fields: queue_id, account, sender, reply_id
SIEVE_VACATION_SENT: Final = "sieve.vacation_sent"
#: fields: queue_id, account, sender, error
SIEVE_VACATION_FAILED: Final = "sieve.vacation_failed"
#: fields: queue_id, account, sender, dsn_id (empty when none could be sent without backscatter)
SIEVE_REJECTED: Final = "sieve.rejected"
SMTP_AUTH_OK: Final = "smtp.auth_ok"
SMTP_INTERNAL_ERROR: Final = "smtp.internal_error"

# --- a mailbox's index (mailapp.store.index); fields: mailbox or path ---
#: an index found damaged (quick_check at first open, or SQLite at run time), moved aside; also: aside, error
INDEX_DAMAGED: Final = "store.index_damaged"
#: an index built from the Maildir (missing or damaged); also: count (folders)
INDEX_REBUILT: Final = "store.index_rebuilt"
#: an index brought in line with the Maildir at first open; also: changed (rows and folders)
INDEX_RECONCILED: Final = "store.index_reconciled"
#: a mailbox's usage total differed from a count of its rows at first open, replaced; also: kept, counted
INDEX_USAGE_RECOUNTED: Final = "store.index_usage_recounted"
#: one folder brought in line with its directory while running (another tool changed it); also: directory, added, removed, flags
FOLDER_RECONCILED: Final = "store.folder_reconciled"
#: a periodic sweep of crash left-overs (spool, relay queue temporary files) failed; also: what
SWEEP_FAILED: Final = "service.sweep_failed"
#: a damaged index not rebuilt yet (connections kept too long, or the rebuild failed); also: error
INDEX_REPAIR_POSTPONED: Final = "store.index_repair_postponed"
#: a mailbox's full-text file (mailapp.store.fulltext) found damaged or of an unknown version, removed to be built again; also: error
FULLTEXT_RESET: Final = "store.fulltext_reset"
#: the full-text indexer failed on a mailbox (it tries again at the next change); also: error
FULLTEXT_FAILED: Final = "store.fulltext_failed"

# --- POP3 (mailapp.pop3); failed logins use AUTH_FAILED with protocol="pop3" ---
#: fields: account, client
MANAGESIEVE_LOGIN: Final = "managesieve.login"
#: fields: account, client, command (PUTSCRIPT, SETACTIVE, DELETESCRIPT, RENAMESCRIPT), name
MANAGESIEVE_CHANGED: Final = "managesieve.changed"
#: fields: client, account
MANAGESIEVE_TIMEOUT: Final = "managesieve.timeout"
#: fields: client, failures
MANAGESIEVE_AUTH_FAILURES_EXCEEDED: Final = "managesieve.auth_failures_exceeded"
#: fields: client
MANAGESIEVE_INTERNAL_ERROR: Final = "managesieve.internal_error"
POP3_LOGIN: Final = "pop3.login"
POP3_IN_USE: Final = "pop3.in_use"
POP3_UPDATE: Final = "pop3.update"
POP3_UPDATE_FAILED: Final = "pop3.update_failed"
POP3_TIMEOUT: Final = "pop3.timeout"
POP3_AUTH_FAILURES_EXCEEDED: Final = "pop3.auth_failures_exceeded"
POP3_INTERNAL_ERROR: Final = "pop3.internal_error"

# --- relay: the outbound queue and its manager (mailapp.relay); RELAY_DEFERRED above ---
RELAY_QUEUED: Final = "relay.queued"
RELAY_DELIVERED: Final = "relay.delivered"
RELAY_BOUNCED: Final = "relay.bounced"
RELAY_EXPIRED: Final = "relay.expired"
RELAY_DELAY_WARNING: Final = "relay.delay_warning"
#: a "relayed" DSN sent: NOTIFY=SUCCESS for a recipient handed to a peer without DSN; also: dsn_id, queue_id, sender, count
RELAY_RELAYED_DSN_SENT: Final = "relay.relayed_dsn_sent"
RELAY_DSN_SENT: Final = "relay.dsn_sent"
RELAY_DOUBLE_BOUNCE: Final = "relay.double_bounce"
RELAY_DSN_FAILED: Final = "relay.dsn_failed"
RELAY_CORRUPT_ENTRY: Final = "relay.corrupt_entry"
RELAY_QUEUE_LOADED: Final = "relay.queue_loaded"
RELAY_QUEUE_LOCKED: Final = "relay.queue_locked"
RELAY_QUEUE_WRITE_FAILED: Final = "relay.queue_write_failed"
RELAY_PUBLISH_FAILED: Final = "relay.publish_failed"
RELAY_ADMIN: Final = "relay.admin"
RELAY_ATTEMPT: Final = "relay.attempt"
#: a next hop's TLS failed a policy (mailapp.relay.tlspolicy); fields: hop, domain, mode, outcome, result_type, reason
RELAY_TLS_FAILED: Final = "relay.tls_failed"
#: a next hop's session after its TLS check (debug; mailapp.relay.tlspolicy); fields: hop, domain,
#: policy (none, opportunistic, encrypt, verify, dane, sts, sts-testing), policy_type (RFC 8460's),
#: result (verified, unverified, plaintext, or an RFC 8460 result type), refused
RELAY_TLS_SESSION: Final = "relay.tls_session"
#: an MTA-STS policy fetched, or not; fields: domain, and policy_id, mode, mx, max_age or reason
RELAY_MTA_STS: Final = "relay.mta_sts"
#: the relay wrote a day's TLS-RPT reports (mailapp.relay.tlsrpt); fields: day, count, directory
RELAY_TLS_REPORT: Final = "relay.tls_report"
#: a TLS-RPT report sent to one rua destination, or not (mailapp.relay.tlsrptsend);
#: fields: report_id, domain, destination, outcome (sent, failed, lookup failed), reason
RELAY_TLS_REPORT_SENT: Final = "relay.tls_report_sent"

# --- DSNs for local deliveries (mailapp.delivery; the relay's are relay.dsn_*) ---
#: a "delivered" DSN (NOTIFY=SUCCESS) sent; also: dsn_id, queue_id, sender, count
DSN_DELIVERED_SENT: Final = "dsn.delivered_sent"
#: a "delivered" DSN could not be sent (warn); also: queue_id, sender, error
DSN_DELIVERED_FAILED: Final = "dsn.delivered_failed"

# --- DKIM signing of outbound mail (mailapp.dkim) ---
#: a message signed on its way to the relay queue (debug); also: queue_id, domain, selector
DKIM_SIGNED: Final = "dkim.signed"
#: a message left unsigned: its From: domain has no keys (debug), or its header
#: block cannot be signed as it stands (warn); also: queue_id, domain, reason
DKIM_UNSIGNED: Final = "dkim.unsigned"
#: signing failed (unreadable key, say): the message was refused with 451, never sent unsigned; also: queue_id
DKIM_SIGN_FAILED: Final = "dkim.sign_failed"
#: the signing process (mailapp.dkim.process) started; also: pid, started (children so far)
DKIM_SIGNER_STARTED: Final = "dkim.signer_started"
#: the signing process ended, stopped answering or wrote on
#: stderr (error/warn); also: reason, count, timeout, line, error
DKIM_SIGNER_FAILED: Final = "dkim.signer_failed"

# --- IMAP (mailapp.imap); failed logins use AUTH_FAILED with protocol="imap" ---
IMAP_LOGIN: Final = "imap.login"
IMAP_TIMEOUT: Final = "imap.timeout"
IMAP_AUTH_FAILURES_EXCEEDED: Final = "imap.auth_failures_exceeded"
IMAP_INTERNAL_ERROR: Final = "imap.internal_error"
#: A session's NOTIFY watch overflowed and was turned off (RFC 5465 NOTIFICATIONOVERFLOW); fields: account.
IMAP_NOTIFY_OVERFLOW: Final = "imap.notify_overflow"
#: a message deeper than mime.MAX_DEPTH or with more than mime.MAX_PARTS parts: the rest is text; also: uid
IMAP_STRUCTURE_CUT: Final = "imap.structure_cut"

# --- abuse resistance (mailapp.abuse and the sessions that ask it); failures are AUTH_FAILED ---
AUTH_BANNED: Final = "auth.banned"
AUTH_BANNED_REFUSED: Final = "auth.banned_refused"
SEND_RATE_LIMITED: Final = "auth.send_rate_limited"
COMMANDS_BEFORE_AUTH_EXCEEDED: Final = "auth.commands_before_auth_exceeded"
#: what a client sent after compression began (IMAP COMPRESS) is not DEFLATE; the session closes; fields: protocol, client
COMPRESSED_INPUT_CORRUPT: Final = "session.compressed_input_corrupt"

# --- webmail (mailapp.web); failed sign-ins use AUTH_FAILED with protocol=webmail ---
WEBMAIL_LOGIN: Final = "webmail.login"
WEBMAIL_LOGIN_THROTTLED: Final = "webmail.login_throttled"
WEBMAIL_CSRF_REJECTED: Final = "webmail.csrf_rejected"
#: a user saved a part of the settings page; also: account, part (rules, vacation, forwarding, script, profile, password)
WEBMAIL_SETTINGS_CHANGED: Final = "webmail.settings_changed"
WEBMAIL_SENT: Final = "webmail.sent"
WEBMAIL_SEND_FAILED: Final = "webmail.send_failed"
#: an unexpected error answering a request (500); also: method, path
WEBMAIL_REQUEST_FAILED: Final = "webmail.request_failed"

# --- sessions of every protocol (mailapp.sessions); fields: protocol, listener, client ---
SESSION_STARTED: Final = "session.started"
#: also: seconds (how long the session lasted)
SESSION_ENDED: Final = "session.ended"
#: a closing connection cut after the close grace (mailapp.sessions.CLOSE_GRACE); also: grace
SESSION_CUT: Final = "session.cut"
#: a connection refused for the connection limits; also: reason
SESSION_REFUSED: Final = "session.refused"
#: the refusals of one client address not logged one by one in the last
#: window (mailapp.sessions.RefusalLog); also: count, seconds
SESSION_REFUSED_SUMMARY: Final = "session.refused_summary"
#: a session cut for a deadline or a minimum rate (mailapp.sessions.Overrun); also: overrun, seconds
SESSION_OVERRUN: Final = "session.overrun"
#: one command answered; also: command, seconds. Published only to the
#: in-process telemetry publisher (metrics), never to the log: too many.
SESSION_COMMAND: Final = "session.command"

# --- operations: reload, state directory format (mailapp.reload, mailapp.stateformat) ---
RELOADED: Final = "service.reloaded"
RELOAD_FAILED: Final = "service.reload_failed"
RELOAD_NEEDS_RESTART: Final = "service.reload_needs_restart"
TLS_RELOADED: Final = "tls.reloaded"
STATE_FORMAT_CREATED: Final = "service.state_format_created"
#: an older state directory migrated at start; also: state_dir, from_format, state_format
STATE_FORMAT_UPGRADED: Final = "service.state_format_upgraded"


# --- ARC sealing of forwarded mail (mailapp.authentication.sealing) ---
#: a forwarded copy ARC-sealed by its alias's domain; also: queue_id, domain, cv (the chain status sealed)
ARC_SEALED: Final = "arc.sealed"
#: a forwarded copy left unsealed (no key for the domain, a chain already failed, an error); also: queue_id, domain, reason
ARC_UNSEALED: Final = "arc.unsealed"


# --- the content scanner and the Junk folder that teaches it (mailapp.spam) ---
#: one message's scan decided; also: queue_id, rspamd (its action), score, action (ours:
#: accept, junk, reject, tempfail), reason, direction, client, user, size, scan_seconds
SPAM_SCANNED: Final = "spam.scanned"
#: rspamd did not answer a scan (the fail mode decides); also: queue_id, error, fail
SPAM_SCAN_FAILED: Final = "spam.scan_failed"
#: authenticated submission refused as spam (a compromised account?); also: account, queue_id, client, sender
SPAM_OUTBOUND_REJECTED: Final = "spam.outbound_rejected"
#: a message filed into or out of Junk taught rspamd; also: account, folder, uid, as_ (spam, ham), source, code, already
SPAM_LEARNED: Final = "spam.learned"
#: a message filed into or out of Junk could not teach rspamd (the move stands); also: account, folder, uid, as_, error
SPAM_LEARN_FAILED: Final = "spam.learn_failed"


def all_events() -> frozenset[str]:
    """Every declared name, so that a test can prove they are unique and well formed."""
    return frozenset(
        value for key, value in globals().items() if key.isupper() and isinstance(value, str)
    )
