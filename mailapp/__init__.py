"""
mailapp: a mail server on Twisted.

SMTP, POP3, IMAP4 and webmail over one Maildir store, run as
``twistd mailapp --config FILE``. The composition root is
:mod:`mailapp.service`; the contracts between the parts are in
:mod:`mailapp.interfaces`.
"""

__version__ = "0.1.0"
