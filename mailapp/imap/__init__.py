"""
The IMAP4rev1 server (RFC 3501) with the extensions modern clients use:
folders, UIDs and flags from the store's index, IDLE push from the store's
event bus, and message bodies streamed from disk.

  - L{mailapp.imap.wire}: argument parsing and response formatting, sequence
    sets, dates, mailbox names (modified UTF-7);
  - L{mailapp.imap.mime}: the MIME structure of a stored message (ENVELOPE,
    BODYSTRUCTURE, section offsets);
  - L{mailapp.imap.search}: SEARCH keys;
  - L{mailapp.imap.server}: the session, its view of the selected folder,
    the factory and the listener builder.
"""
