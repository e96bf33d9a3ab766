"""
THREAD (RFC 5256 sections 2.2 and 3): ORDEREDSUBJECT and REFERENCES over
the L{sorting.SortFields} of the messages a search found, and the thread
list's wire form.

REFERENCES follows the section's steps one by one: (1) link containers by
the References (or In-Reply-To) message IDs, never making a loop and never
changing a link already made, then the message under its last reference;
(2) the root set; (4) dummies pruned (their children promoted, but to the
root only when there is a single one); (5) roots with the same base subject
gathered; (6) siblings sorted by sent date, a dummy by its first child's,
ties in sequence order. Pure computation, linear-ish in the messages; the
session runs it on a worker thread.
"""

from __future__ import annotations

from typing import Sequence

from mailapp.imap.sorting import SortFields

__all__ = ["Node", "format_threads", "ordered_subject", "references"]


class Node:
    """A container: a message (its number) or a dummy (C{None}), and its children."""

    __slots__ = ("number", "fields", "parent", "children")

    def __init__(self, number: int | None = None, fields: SortFields | None = None) -> None:
        self.number = number
        self.fields = fields
        self.parent: Node | None = None
        self.children: list[Node] = []

    def _date_key(self) -> tuple[float, int]:
        node = self
        while node.fields is None and node.children:
            node = node.children[0]
        if node.fields is None or node.number is None:
            return (0.0, 0)
        return (node.fields.date, node.number)

    def _subject(self) -> tuple[str, bool]:
        node = self
        if node.fields is None and node.children:
            node = node.children[0]
        if node.fields is None:
            return ("", False)
        return (node.fields.subject, node.fields.is_reply)

    def _descends_from(self, other: Node) -> bool:
        node: Node | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False

    def _attach(self, child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def _detach(self) -> None:
        if self.parent is not None:
            self.parent.children.remove(self)
            self.parent = None


def ordered_subject(items: Sequence[tuple[int, SortFields]]) -> list[Node]:
    """
    ORDEREDSUBJECT: sorted by base subject then sent date; each run of one
    subject is a thread whose first message is the parent of all the others;
    the threads in the order of their first messages' sent dates.
    """
    ordered = sorted(items, key=lambda item: (item[1].subject, item[1].date, item[0]))
    roots: list[Node] = []
    current: Node | None = None
    for number, fields in ordered:
        node = Node(number, fields)
        if current is not None and current.fields is not None and current.fields.subject == fields.subject:
            current._attach(node)
        else:
            current = node
            roots.append(node)
    roots.sort(key=Node._date_key)
    return roots


def references(items: Sequence[tuple[int, SortFields]]) -> list[Node]:
    """REFERENCES (section 3), steps 1 to 6; the root set, sorted."""
    table: dict[str, Node] = {}
    #: Messages without a Message-ID, or repeating one already seen: containers of their own.
    loose: list[Node] = []
    # (1) containers and links, message by message in sequence order.
    for number, fields in items:
        own = fields.message_id
        node = table.get(own) if own is not None else None
        if node is None or node.fields is not None:
            node = Node(number, fields)
            if own is not None and own not in table:
                table[own] = node
            else:
                loose.append(node)
        else:
            node.number, node.fields = number, fields
        # (1A) the references linked in order, oldest first; an existing link stays, no loops.
        previous: Node | None = None
        for reference in fields.references:
            container = table.get(reference)
            if container is None:
                container = table[reference] = Node()
            if (
                previous is not None
                and container.parent is None
                and container is not previous
                and not previous._descends_from(container)
            ):
                previous._attach(container)
            previous = container
        # (1B) the message under its last reference: a parent it had goes (section 3 takes it
        # for the result of a truncated References field), even when the new link would loop.
        if previous is None or previous is node or previous._descends_from(node):
            node._detach()
        elif node.parent is not previous:
            previous._attach(node)
    # (2) the root set: every container without a parent.
    roots = [node for node in [*table.values(), *loose] if node.parent is None]
    # (4) dummies pruned, (5) roots of one base subject gathered, (6) siblings sorted by date.
    roots = _prune(roots, top=True)
    roots = _gather_subjects(roots)
    _sort(roots)
    return roots


def _descendants(roots: list[Node]) -> list[Node]:
    """Every node under C{roots}, parents before children (iteratively: a thread may be thousands deep)."""
    out: list[Node] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _prune(roots: list[Node], top: bool) -> list[Node]:
    """
    Step 4: a dummy without children goes; one with children gives way to
    them, except at the top, where only a single child is promoted.
    """
    for node in reversed(_descendants(roots)):
        kept: list[Node] = []
        for child in node.children:
            if child.fields is not None:
                kept.append(child)
            else:
                kept.extend(child.children)
        for child in kept:
            child.parent = node
        node.children = kept
    result: list[Node] = []
    for node in roots:
        if node.fields is not None or len(node.children) > 1:
            result.append(node)
        elif node.children:
            node.children[0].parent = None
            result.append(node.children[0])
    return result


def _gather_subjects(roots: list[Node]) -> list[Node]:
    """
    Step 5: roots whose base subjects are the same are put together. The
    subject table prefers a dummy, then a message that is not a reply; a
    root then joins the one in the table (as siblings of a dummy's children,
    or as a reply under the original), or both go under a new dummy that
    takes the table's place.
    """
    subjects: dict[str, Node] = {}
    for node in roots:
        subject, reply = node._subject()
        if not subject:
            continue
        held = subjects.get(subject)
        if held is None or (held.fields is not None and (node.fields is None or (held._subject()[1] and not reply))):
            subjects[subject] = node
    slots: list[Node | None] = list(roots)
    where = {id(node): i for i, node in enumerate(roots)}
    for i in range(len(slots)):
        slot = slots[i]
        if slot is None:
            continue
        node = slot
        subject, reply = node._subject()
        held = subjects.get(subject) if subject else None
        if held is None or held is node:
            continue
        if held.fields is None and node.fields is None:
            for child in list(node.children):
                held._attach(child)
        elif held.fields is None or (reply and not held._subject()[1]):
            held._attach(node)
        else:
            dummy = Node()
            slots[where[id(held)]] = dummy
            where[id(dummy)] = where[id(held)]
            dummy._attach(held)
            dummy._attach(node)
            subjects[subject] = dummy
        slots[i] = None
    return [node for node in slots if node is not None]


def _sort(roots: list[Node]) -> None:
    """Step 6: each set of siblings by sent date (a dummy by its first child's), the deepest first."""
    for node in reversed(_descendants(roots)):
        node.children.sort(key=Node._date_key)
    roots.sort(key=Node._date_key)


# -- the wire form -------------------------------------------------------------------------------


def format_threads(roots: Sequence[Node]) -> bytes:
    """C{(1 2 (3)(4))(5)}: a chain as numbers, siblings as parenthesized lists."""
    out: list[str] = []
    stack: list[Node | str] = []
    for root in reversed(roots):
        stack.extend([")", root, "("])
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = item
        while True:
            if node.number is not None:
                if out and out[-1] not in ("(", ")"):
                    out.append(" ")
                out.append(str(node.number))
            if len(node.children) == 1:
                node = node.children[0]
                continue
            if node.children:
                if out and out[-1] not in ("(", ")"):
                    out.append(" ")
                for child in reversed(node.children):
                    stack.extend([")", child, "("])
            break
    return "".join(out).encode("ascii")
