"""
The RFCs' example signatures, with the key records that verify them.

RFC 8463 Appendix A: RFC 6376's example message (A.1) signed twice,
rsa-sha256 (selector ``test``) and ed25519-sha256 (``brisbane``), and the
two key records of A.2 (L{KEYS}, L{MESSAGE}).

RFC 6376 Appendix A.2: the same message signed simple/simple by
``brisbane._domainkey.example.com`` (L{RFC6376_MESSAGE}). The key record
A.3 prints does not match that signature (a known erratum); the one that
does, which other verifiers' test suites serve too, is L{RFC6376_KEY}.

And a sender of our own for the checks' tests: L{SENDER_ZONE}, a.test's
SPF, DKIM key (a fresh 2048-bit RSA key per run) and p=reject, q.test's
p=quarantine; L{signed} signs a message as a.test.
"""

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEYS = {
    "brisbane._domainkey.football.example.com": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    "test._domainkey.football.example.com": (
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR",
        "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC",
        "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3",
        "Ip3G+2kryOTIKT+l/K4w3QIDAQAB",
    ),
}

#: RFC 6376 Appendix A.1: the example message's header fields, which both RFCs sign.
_A1_HEADER = b"""\
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>
"""


def _message(signatures: bytes, body: bytes) -> bytes:
    return (signatures + _A1_HEADER + b"\n" + body).replace(b"\n", b"\r\n")


#: RFC 8463 Appendix A.3 (its body has two spaces after "game.", as printed there).
MESSAGE = _message(
    b"""\
DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
""",
    b"Hi.\n\nWe lost the game.  Are you hungry yet?\n\nJoe.\n",
)

RFC6376_KEY = (
    "v=DKIM1; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDwIRP/UC3SBsEmGqZ9ZJW3/DkMoGeLnQg1fWn7/zYt"
    "IxN2SnFCjxOCKG9v3b4jYfcTNh5ijSsq631uBItLa7od+v/RtdC2UzJ1lWT947qR+Rcac2gbto/NMqJ0fzfVjH4OuKhi"
    "tdY9tf6mcwGjaNBcWToIMmPSPDdQPNUYckcQ2QIDAQAB"
)
#: RFC 6376 Appendix A.2 (simple/simple: every space counts; Received: is signed too).
RFC6376_MESSAGE = _message(
    b"""\
DKIM-Signature: v=1; a=rsa-sha256; s=brisbane; d=example.com;
      c=simple/simple; q=dns/txt; i=joe@football.example.com;
      h=Received : From : To : Subject : Date : Message-ID;
      bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
      b=AuUoFEfDxTDkHlLXSZEpZj79LICEps6eda7W3deTVFOk4yAUoqOB
        4nujc7YopdG5dWLSdNg6xNAZpOPr+kHxt1IrE+NahM6L/LbvaHut
        KVdkLLkpVaVVQPzeRDI009SO2Il5Lu7rDNH6mZckBdrIx0orEtZV
        4bmp/YzhwvcubU4=;
Received: from client1.football.example.com  [192.0.2.1]
      by submitserver.example.com with SUBMISSION;
      Fri, 11 Jul 2003 21:01:54 -0700 (PDT)
""",
    b"Hi.\n\nWe lost the game. Are you hungry yet?\n\nJoe.\n",
)


def _key() -> tuple[bytes, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


PRIVATE, PUBLIC = _key()
SENDER_ZONE = {
    "a.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
    "mail.a.test": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.10"]},
    "sel._domainkey.a.test": {"TXT": [PUBLIC]},
    "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
    "_dmarc.q.test": {"TXT": ["v=DMARC1; p=quarantine"]},
}


def signed(text: bytes, domain: bytes = b"a.test") -> bytes:
    return dkim.sign(text, b"sel", domain, PRIVATE, include_headers=[b"from", b"to", b"subject"]) + text
