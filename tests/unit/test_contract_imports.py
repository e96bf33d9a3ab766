"""
The contract (L{mailapp.interfaces}, L{mailapp.records}) is all a protocol
needs: importing the protocols loads no part of the Maildir implementation,
and every name the store package always offered is still importable from it.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial import unittest

PROTOCOLS = ("mailapp.pop3", "mailapp.smtp", "mailapp.imap.server", "mailapp.web.app")


def loaded_after(*modules: str) -> set[str]:
    """The mailapp modules a fresh interpreter holds after importing C{modules}."""
    code = "import sys\n" + "".join(f"import {name}\n" for name in modules) + (
        "print('\\n'.join(name for name in sys.modules if name.startswith('mailapp')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


class ContractImportTests(unittest.TestCase):
    def test_importing_the_protocols_leaves_the_maildir_store_unloaded(self) -> None:
        loaded = loaded_after(*PROTOCOLS)
        self.assertTrue(set(PROTOCOLS) <= loaded, loaded)
        self.assertNotIn("mailapp.store.maildir", loaded)

    def test_the_records_module_loads_no_other_mailapp_module(self) -> None:
        self.assertEqual(loaded_after("mailapp.records"), {"mailapp", "mailapp.records"})

    def test_the_store_package_still_offers_the_maildir_names_when_asked(self) -> None:
        from mailapp import store
        from mailapp.store import maildir

        for name in store.__all__:
            self.assertIsNotNone(getattr(store, name), name)
        self.assertIs(store.MaildirStore, maildir.MaildirStore)
        self.assertIs(store.open_message_file, maildir.open_message_file)

    def test_the_old_homes_of_the_records_name_the_same_objects(self) -> None:
        from mailapp import records
        from mailapp.store import events, names
        from mailapp.store import records as store_records

        self.assertIs(store_records.MessageInfo, records.MessageInfo)
        self.assertIs(store_records.Usage, records.Usage)
        self.assertIs(events.FolderEvent, records.FolderEvent)
        self.assertEqual((events.ADDED, events.EXPUNGED, events.FLAGS_CHANGED), ("added", "expunged", "flags_changed"))
        self.assertIs(names.SPECIAL_FOLDERS, records.SPECIAL_FOLDERS)
        self.assertEqual(names.INBOX, "INBOX")

    def test_an_unknown_name_of_the_store_package_is_an_attribute_error(self) -> None:
        from mailapp import store

        with self.assertRaises(AttributeError):
            store.NoSuchThing  # noqa: B018
