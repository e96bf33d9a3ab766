"""
ManageSieve (RFC 5804): users upload, check, list and activate their Sieve
scripts (L{mailapp.sieve.scripts}) over its own listener, 4190 with
STARTTLS, logging in through the same accounts, portal and failed-login
delays as POP3 and IMAP (the shared L{mailapp.linesession.LineSession}).
"""

from mailapp.managesieve.factory import ManageSieveFactory, buildFactory
from mailapp.managesieve.session import ManageSieveServer

__all__ = ["ManageSieveFactory", "ManageSieveServer", "buildFactory"]
