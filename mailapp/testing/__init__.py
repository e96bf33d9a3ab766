"""
Public in-memory fakes of mailapp's interfaces, for tests of protocols and
of code that uses mailapp (treq's C{treq.testing}, maddy's testutils):

- L{FakeAccounts}, L{cheap_password_hasher} (C{accounts});
- L{FakeStore} and its mailboxes, folders and writers (C{store});
- L{RecordingStore}, a delivery target that records and fails on demand (C{recording});
- L{FakeResolver}, DNS from a dict (C{resolver});
- thread pools and a reactor that run "thread" work at once (C{threads});
- L{service_context} and L{build_factory}: a protocol's real factory over all of them (C{context}).

Every fake is checked against its interface in C{tests/unit/test_testing_fakes.py}.
"""

from mailapp.testing.accounts import FakeAccounts, cheap_password_hasher
from mailapp.testing.context import MINIMAL_CONFIG, build_factory, fake_config, listener, service_context
from mailapp.testing.recording import Delivery, RecordingStore, RecordingWriter
from mailapp.testing.resolver import FakeResolver
from mailapp.testing.store import FakeFolder, FakeMailbox, FakeMessageWriter, FakeStore
from mailapp.testing.threads import HeldThreadPool, InlineWorkerPools, SynchronousReactor, SynchronousThreadPool

__all__ = [
    "MINIMAL_CONFIG",
    "Delivery",
    "FakeAccounts",
    "FakeFolder",
    "FakeMailbox",
    "FakeMessageWriter",
    "FakeResolver",
    "FakeStore",
    "HeldThreadPool",
    "InlineWorkerPools",
    "RecordingStore",
    "RecordingWriter",
    "SynchronousReactor",
    "SynchronousThreadPool",
    "build_factory",
    "cheap_password_hasher",
    "fake_config",
    "listener",
    "service_context",
]
