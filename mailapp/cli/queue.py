"""
``mailapp queue``: list, show, retry, delete and bounce the messages
waiting to be relayed.

Reading needs no lock (envelopes are only ever replaced by rename). Changes
go through L{mailapp.relay.control}: done here when no server holds the
queue lock, else handed to the running relay manager as a request file,
whose answer is awaited for L{QUEUE_ANSWER_TIMEOUT} seconds.
"""

from __future__ import annotations

from typing import Any

from mailapp.cli.command import EXIT_OK, CommandFailure, CommandLineParser, Context, add_command, warn

__all__ = ["QUEUE_ANSWER_TIMEOUT", "add_queue_commands"]

#: How long a change waits for the running server to answer.
QUEUE_ANSWER_TIMEOUT = 10.0


def _queue_layout(context: Context) -> Any:
    from mailapp.relay.queue import QueueLayout

    return QueueLayout(context.state_dir / "queue")


def _envelope_data(envelope: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(envelope)
    data.pop("version", None)
    return data


def _when(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _queue_list(context: Context) -> int:
    from mailapp.relay.queue import load_entries

    problems: list[str] = []
    entries = load_entries(_queue_layout(context), problems=problems)
    for problem in problems:
        warn(f"unreadable queue entry {problem}")
    lines = []
    for envelope in entries:
        lines.append(
            f"{envelope.id}  {_when(envelope.created)}  {envelope.size:>9}  <{envelope.sender}>  "
            f"attempts={envelope.attempts}  next={_when(envelope.next_attempt)}"
        )
        for recipient in envelope.recipients:
            reply = f"  ({recipient.last_reply})" if recipient.last_reply else ""
            lines.append(f"    {recipient.state:<9} {recipient.address}{reply}")
    context.report(
        "\n".join(lines) if lines else "the queue is empty",
        [_envelope_data(envelope) for envelope in entries],
    )
    return EXIT_OK


def _queue_show(context: Context) -> int:
    from mailapp.relay.queue import CorruptEntry, read_envelope

    layout = _queue_layout(context)
    entry_id = context.options.id
    try:
        envelope = read_envelope(layout.envelope(entry_id))
    except FileNotFoundError:
        raise CommandFailure(f"no queue entry {entry_id}") from None
    except CorruptEntry as error:
        raise CommandFailure(f"queue entry {entry_id} is unreadable: {error}") from None
    data = _envelope_data(envelope)
    data["message_file"] = str(layout.message(entry_id))
    text = [
        f"id:           {envelope.id}",
        f"sender:       <{envelope.sender}>",
        f"created:      {_when(envelope.created)}",
        f"size:         {envelope.size}",
        f"attempts:     {envelope.attempts}",
        f"next attempt: {_when(envelope.next_attempt)}",
        f"message file: {layout.message(entry_id)}",
        "recipients:",
    ]
    for recipient in envelope.recipients:
        text.append(f"  {recipient.address}: {recipient.state}, {recipient.attempts} attempts")
        if recipient.last_reply:
            text.append(f"    last reply ({recipient.remote or '-'}): {recipient.last_reply}")
    context.report("\n".join(text), data)
    return EXIT_OK


def _queue_change(context: Context) -> int:
    from mailapp.relay import control
    from mailapp.relay.queue import CorruptEntry, load_entries, read_envelope, remove_entry_sync, write_envelope_sync

    verb = context.options.queue_verb
    entry_id = getattr(context.options, "id", None)
    layout = _queue_layout(context)
    lock = control.try_lock(layout)
    if lock is None:
        name = control.submit(layout, verb, entry_id)
        result = control.wait_for_result(layout, name, QUEUE_ANSWER_TIMEOUT)
        if result is None:
            raise CommandFailure(
                f"the server did not answer within {QUEUE_ANSWER_TIMEOUT:.0f} s; the request stays "
                "in the queue's control directory and is carried out when the server gets to it"
            )
        result["server"] = "running"
    else:
        import time

        try:
            if entry_id is None:
                envelopes = load_entries(layout, problems=[])
            else:
                try:
                    envelopes = [read_envelope(layout.envelope(entry_id))]
                except FileNotFoundError:
                    raise CommandFailure(f"no queue entry {entry_id}") from None
                except CorruptEntry as error:
                    raise CommandFailure(f"queue entry {entry_id} is unreadable: {error}") from None
            now = time.time()
            for envelope in envelopes:
                changed = control.apply_to_envelope(envelope, verb, now)
                if changed is None:
                    remove_entry_sync(layout, envelope.id)
                else:
                    write_envelope_sync(layout, changed)
            result = {"ok": True, "verb": verb, "ids": [e.id for e in envelopes], "server": "stopped"}
        finally:
            control.release(lock)
    if not result.get("ok"):
        raise CommandFailure(str(result.get("error", "refused")))
    ids = ", ".join(result["ids"]) or "nothing"
    text = {
        "retry": f"retrying now: {ids}",
        "delete": f"deleted {ids} (no bounce is sent)",
        "bounce": f"returned to sender: {ids}",
    }[verb]
    if result["server"] == "stopped" and verb != "delete":
        text += " (the server is not running: this takes effect when it starts)"
    context.report(text, result)
    return EXIT_OK


def add_queue_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp queue ...`` in the subparsers action C{verbs}."""
    queue = verbs.add_parser("queue", help="list and manage the outbound relay queue", parents=[common])
    queue_verbs = queue.add_subparsers(dest="queue_verb", metavar="ACTION", required=True, parser_class=CommandLineParser)
    add_command(common, queue_verbs, "list", _queue_list, "List the messages waiting to be relayed, with each recipient's state.")
    sub = add_command(common, queue_verbs, "show", _queue_show, "Show one queued message's envelope.")
    sub.add_argument("id", metavar="ID")
    sub = add_command(common, queue_verbs, "retry", _queue_change, "Try one queued message (or all) again now.")
    sub.add_argument("id", metavar="ID", nargs="?")
    sub = add_command(common, queue_verbs, "delete", _queue_change, "Delete a queued message without telling its sender.")
    sub.add_argument("id", metavar="ID")
    sub = add_command(
        common,
        queue_verbs, "bounce", _queue_change, "Give up on a queued message: its sender gets a delivery status notification."
    )
    sub.add_argument("id", metavar="ID")
