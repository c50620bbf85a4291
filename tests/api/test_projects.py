"""Projects: a workspace's VCS root as its project, stable ids, listing. End to end against a real daemon."""
from __future__ import annotations

import pytest

from omnid.projects import project_id_for
from omnid_client import Invalid, NotFound
from tests.helpers import (
    UNKNOWN_PROJECT,
    DaemonProcess,
    ev,
    make_repo,
    raw_call,
    refused,
    start,
)

# --- projects --------------------------------------------------------------------------


def test_a_workspace_inside_a_repository_belongs_to_the_repository_root(client, tmp_path):
    repo = make_repo(tmp_path / "repo", ".git", "src/pkg", "docs")

    a = start(client, repo / "src" / "pkg")
    b = start(client, repo / "docs")
    c = start(client, repo)

    assert a.project_id == b.project_id == c.project_id == project_id_for(str(repo))
    project = client.get_project(a.project_id)
    assert (project.root, project.name, project.vcs) == (str(repo), "repo", "git")
    assert (project.session_count, project.live_sessions) == (3, 3)
    assert client.get_project(workspace=str(repo / "src")) == project


def test_other_version_control_systems_mark_a_root_too(client, tmp_path):
    for marker, vcs in [(".git-file", "git"), (".hg", "hg"), (".jj", "jj"), (".svn", "svn")]:
        repo = make_repo(tmp_path / marker.strip("."), marker, "deep/down")
        project = client.get_project(start(client, repo / "deep" / "down").project_id)
        assert (project.project_id, project.root, project.vcs) == (project_id_for(str(repo)), str(repo), vcs), marker


def test_the_innermost_repository_wins(client, tmp_path):
    outer = make_repo(tmp_path / "outer", ".git", "lib")
    inner = make_repo(outer / "vendor" / "inner", ".git", "src")

    assert start(client, inner / "src").project_id == project_id_for(str(inner))
    assert start(client, outer / "lib").project_id == project_id_for(str(outer))


def test_a_workspace_outside_version_control_is_its_own_project(client, tmp_path):
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)

    parent = start(client, plain)
    child = start(client, plain / "sub")

    assert parent.project_id == project_id_for(str(plain))
    assert child.project_id == project_id_for(str(plain / "sub"))
    project = client.get_project(child.project_id)
    assert (project.root, project.name, project.vcs) == (str(plain / "sub"), "sub", None)


def test_project_ids_are_stable_across_a_daemon_restart(home, daemon, tmp_path):
    repo = make_repo(tmp_path / "repo", ".git", "a", "b")
    with daemon.client() as c:
        before = start(c, repo / "a")
        c.put_memory("k", "v", workspace=str(repo / "a"))
    assert daemon.stop() == 0

    again = DaemonProcess(home).start()
    try:
        with again.client() as c:
            project = c.get_project(workspace=str(repo / "b"))
            assert project.project_id == before.project_id == project_id_for(str(repo))
            assert project.memory_count == 1
            assert start(c, repo / "b").project_id == before.project_id
            assert [p.project_id for p in c.list_projects().projects] == [before.project_id]
    finally:
        assert again.stop() == 0


def test_projects_are_listed_most_recently_active_first_in_pages(client, tmp_path):
    sessions = [start(client, tmp_path / f"p{i}") for i in range(4)]
    ids = [s.project_id for s in sessions]
    assert [p.project_id for p in client.list_projects().projects] == ids[::-1]

    client.append_context(sessions[0].session_id, [ev("decision", "activity in p0")])
    newest_first = [ids[0], ids[3], ids[2], ids[1]]
    assert [p.project_id for p in client.list_projects().projects] == newest_first

    seen, cursor = [], None
    for _ in range(3):
        page = client.list_projects(limit=3, cursor=cursor)
        seen += [p.project_id for p in page.projects]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first
    assert cursor is None


PROJECT_REFS = {
    "unknown id": ({"project_id": UNKNOWN_PROJECT}, NotFound),
    "unknown workspace": ({"workspace": "/nonexistent/never/seen"}, NotFound),
    "malformed id": ({"project_id": "prj_nothex"}, Invalid),
    "neither id nor workspace": ({}, Invalid),
    "both id and workspace": ({"project_id": UNKNOWN_PROJECT, "workspace": "/tmp"}, Invalid),
}


def test_get_project_errors(client, session, ws):
    for case, (params, error) in PROJECT_REFS.items():
        refused(error, case, raw_call, client, "project.get", params)
    with pytest.raises(Invalid):  # even when both name the same project
        client.get_project(session.project_id, workspace=str(ws))
