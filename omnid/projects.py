"""Projects: the enclosing version-control root of a workspace (else the workspace itself),
named by a stable id derived from that root's path."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

VCS_MARKERS = (".git", ".hg", ".jj", ".svn", ".fossil", "_FOSSIL_")


@dataclass(frozen=True, slots=True)
class ProjectRoot:
    project_id: str
    root: str
    name: str
    vcs: str | None


def project_id_for(root: str) -> str:
    return "prj_" + hashlib.sha256(os.fsencode(root)).hexdigest()[:12]


def locate(workspace: str) -> ProjectRoot:
    """The project a workspace path belongs to; the path need not exist any more."""
    start = os.path.normpath(os.path.abspath(workspace))
    path = start
    while True:
        for marker in VCS_MARKERS:
            if os.path.lexists(os.path.join(path, marker)):
                return _root(path, marker.strip("._").lower() or marker)
        parent = os.path.dirname(path)
        if parent == path:
            return _root(start, None)
        path = parent


def _root(path: str, vcs: str | None) -> ProjectRoot:
    return ProjectRoot(project_id_for(path), path, os.path.basename(path) or path, vcs)
