"""
DKIM for outbound mail: keys (L{mailapp.dkim.keys}), signatures made with
dkimpy (L{mailapp.dkim.signing}) and the signer the Router calls
(L{mailapp.dkim.signer}).

Where signing happens, once: L{mailapp.delivery.Transaction.commit} asks
the Router's signer for the signatures of a message that came from one of
ours (submission, the webmail, trusted networks, the relay's DSNs: what may
relay) and has remote recipients, on a worker thread, before the relay
queue writes and syncs its copy; the queue puts the fields on top of that
copy. So a 250 still means durable, and the durable copy is the signed one.
Local copies are not signed: they never leave, and the sender logged in.
"""

from mailapp.dkim.keys import ALGORITHMS, DkimKey, KeyStore, KeyStoreError, SigningKeys
from mailapp.dkim.signer import DkimSigner

__all__ = ["ALGORITHMS", "DkimKey", "DkimSigner", "KeyStore", "KeyStoreError", "SigningKeys"]
