"""Constants and process helpers shared by the services tests (imported as ``svc_helpers``)."""

from __future__ import annotations

import psutil

DB, SCHEMA = "ML", "REG"
POOL = "SVC_POOL"
REPO = "ML.REG.IMAGES"
MODEL = "ML.REG.LIN"


def child_pids() -> set[int]:
    """Every live process started (directly or not) by this test process."""
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_tree(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.Error:
        return set()
