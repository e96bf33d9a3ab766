"""
The IMAP4rev1 server (RFC 3501) with the extensions modern clients use:
folders, UIDs and flags from the store's index, IDLE push from the store's
event bus, and message bodies streamed from disk.

  - L{mailapp.imap.server}: the public names (the session, its policy, the
    factory, the listener builder), re-exported from where they live:
  - L{mailapp.imap.session}: one connection's lifecycle and command loop,
    dispatching from the command table;
  - L{mailapp.imap.reader}: the byte stream cut into commands (lines,
    literals, their limits, APPEND's message spooled), with no session state;
  - L{mailapp.imap.selected}: a session's view of its selected folder (the
    sequence number <-> UID map and its updates, \\Recent);
  - L{mailapp.imap.commands}: the command table, and one module per group
    of commands;
  - L{mailapp.imap.factory}: the listener's factory and builder;
  - L{mailapp.imap.policy}: what a listener allows, and the fixed bounds;
  - L{mailapp.imap.state}: the session states the table speaks of;
  - L{mailapp.imap.wire}: argument parsing and response formatting, sequence
    sets, dates, mailbox names (modified UTF-7);
  - L{mailapp.imap.flags}: system flags and keywords;
  - L{mailapp.imap.mime}: the MIME structure of a stored message (ENVELOPE,
    BODYSTRUCTURE, section offsets);
  - L{mailapp.imap.search}: SEARCH keys.
"""
