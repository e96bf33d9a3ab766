"""
The relay queue's files on disk, written in batches: one worker-thread batch
writes every message file and envelope that arrived while the last batch
ran, with one file sync and one directory sync for all of them (group
commit). A message file is a link to the writer's spool file when it is in
wire form, or a copy in wire form when the spool has LF line ends. L{mailapp.relay.queue.Queue} hands it jobs; nothing else
writes the queue's files while the server runs.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailapp.store import durable, messagefile
from mailapp.store.batching import BatchRunner

__all__ = ["BatchWriter", "Job", "WireCopy", "write_file"]


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        durable.write_all(fd, data)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class WireCopy:
    """A spool file stored with LF (for the Maildir): the queue's copy is written in wire form."""

    source: Path
    wire_size: int


def _copy_in_wire_form(content: WireCopy, target: Path) -> None:
    with messagefile.open_message(content.source, content.wire_size) as source:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while chunk := source.read(messagefile.CHUNK_SIZE):
                durable.write_all(fd, chunk)
        finally:
            os.close(fd)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)


# -- the batched writer -----------------------------------------------------------


@dataclass
class Job:
    """
    File changes made durable together: C{writes} (target, bytes or a file to
    link/copy) are written and synced, then C{renames} done and C{unlinks}
    removed, then every touched directory synced.
    """

    writes: list[tuple[Path, bytes | Path | WireCopy]] = field(default_factory=list)
    renames: list[tuple[Path, Path]] = field(default_factory=list)
    unlinks: list[Path] = field(default_factory=list)


def _run_jobs(jobs: list[Job], anchor: Path, use_syncfs: bool) -> list[BaseException | None]:
    """Worker thread: one batch, with one file sync and one directory sync for all of it."""
    failed: dict[int, BaseException] = {}
    written: list[tuple[int, Path]] = []
    for number, job in enumerate(jobs):
        for target, content in job.writes:
            try:
                if isinstance(content, bytes):
                    write_file(target, content)
                elif isinstance(content, WireCopy):
                    _copy_in_wire_form(content, target)
                else:
                    _link_or_copy(content, target)
                written.append((number, target))
            except BaseException as error:
                failed[number] = error
                break
    if written:
        try:
            durable.sync_files([path for _, path in written], anchor, use_syncfs)
        except BaseException as error:
            for number, _ in written:
                failed.setdefault(number, error)
    directories: set[Path] = {path.parent for number, path in written if number not in failed}
    changed_names = False
    for number, job in enumerate(jobs):
        if number in failed:
            continue
        try:
            for source, target in job.renames:
                durable.rename(source, target)
                directories.add(target.parent)
                changed_names = True
            for path in job.unlinks:
                durable.unlink(path)
                directories.add(path.parent)
                changed_names = True
        except BaseException as error:
            failed[number] = error
    # With syncfs the file sync above already made new names durable; only
    # renames and unlinks made after it need another.
    if directories and (changed_names or not use_syncfs):
        try:
            durable.sync_directories(sorted(directories), anchor, use_syncfs)
        except BaseException as error:
            for number in range(len(jobs)):
                failed.setdefault(number, error)
    for number, path in written:
        if number in failed:
            durable.unlink(path)
    return [failed.get(number) for number in range(len(jobs))]


class BatchWriter(BatchRunner[Job]):
    """Jobs that arrive while a batch runs form the next batch (group commit)."""

    def __init__(self, reactor: Any, threadpool: Any, anchor: Path, use_syncfs: bool) -> None:
        super().__init__(reactor, threadpool, lambda jobs: _run_jobs(jobs, anchor, use_syncfs))
