"""
The plain records the store hands to protocols: defined with the contract in
L{mailapp.records} (so that a protocol needs no part of the store to name
them), and importable from here as before.
"""

from mailapp.records import FolderInfo, FolderStatus, MessageInfo, Usage

__all__ = ["FolderInfo", "FolderStatus", "MessageInfo", "Usage"]
